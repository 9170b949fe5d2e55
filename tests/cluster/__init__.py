"""Cluster tier: the operator and agents against a real kube-apiserver + etcd on loopback."""
