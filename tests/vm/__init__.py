"""Tests that run inside the qemu guest (see conftest.py)."""
