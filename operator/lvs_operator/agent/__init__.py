"""The node agent: applies its node's plan to the kernel and keeps it that way."""
