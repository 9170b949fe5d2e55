"""Test infrastructure: the qemu VM (vm tier) and the local control plane (cluster tier)."""
