"""The kopf operator: watches the API, runs the compiler, publishes node plans, writes status."""
