"""Kernel adapters: the only code that touches the kernel.

Each adapter is a small Protocol with a real implementation (netlink through pyroute2, or
`iptables-restore` for the chains the project owns) and an in-memory fake with the same
semantics, EEXIST and ENOENT included. One contract suite per adapter runs against both.
"""
