"""Local Kubernetes control plane for the `cluster` test tier: etcd + kube-apiserver on loopback.

Why: no Docker here, so instead of kind the tier runs the real API server and etcd as plain
processes (the envtest approach), with pinned binaries cached outside the repository.

    from tests.harness.controlplane import LocalControlPlane
    with LocalControlPlane() as cp:          # builds/fetches binaries on first use
        cp.kubectl("apply", "-f", "crds/")
        kubeconfig = cp.mint_kubeconfig("lvs-agent", ["lvs:agents"])

CLI: ``python -m tests.harness.controlplane {prepare,up,run -- CMD...}``.
"""

from .binaries import (
    ETCD_VERSION,
    KUBECTL_LAYER_VERSION,
    KUBERNETES_VERSION,
    Binaries,
    BinariesUnavailable,
    BuildError,
    cache_root,
    ensure_binaries,
)
from .pki import CertificateAuthority, PkiError
from .server import (
    ADMIN_USER,
    SERVICE_CLUSTER_IP_RANGE,
    ControlPlaneError,
    KubectlError,
    LocalControlPlane,
    child_env,
)

__all__ = [
    "ADMIN_USER",
    "ETCD_VERSION",
    "KUBECTL_LAYER_VERSION",
    "KUBERNETES_VERSION",
    "SERVICE_CLUSTER_IP_RANGE",
    "Binaries",
    "BinariesUnavailable",
    "BuildError",
    "CertificateAuthority",
    "ControlPlaneError",
    "KubectlError",
    "LocalControlPlane",
    "PkiError",
    "cache_root",
    "child_env",
    "ensure_binaries",
]
