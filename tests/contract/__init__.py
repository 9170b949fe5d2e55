"""Contract suites: one set of tests per kernel adapter, run against the fake (unit tier) and
the real implementation (kernel or vm tier), so the fake cannot drift from the kernel."""
