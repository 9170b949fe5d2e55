"""The `kind` tier: the Helm chart and the container image on a real kind cluster.

Only where Docker runs (`make kind-e2e`, tests/kind/kind_e2e.py); elsewhere the tier is skipped
with the reason printed, because nothing here can stand in for Docker.
"""
