# The lvs-operator image: one image, two commands. The Helm chart (charts/lvs-operator) runs
# `lvs-operator` in the operator Deployment and `lvs-agent` in the agent DaemonSet; the agent
# overrides the user to uid 0 because it needs NET_ADMIN and NET_RAW, everything else runs as
# the non-root uid 65532 set below.
#
#   make image            # docker build -t lvs-operator:dev .
#
# Pins. Both stages use the same Python base, so the virtualenv built in the first stage finds
# its interpreter at the same path in the second. The base is pinned by its full version tag
# only: Docker Hub's registry API could not be reached when this was written, so the
# manifest-list digest is missing. TODO: append it to both FROM lines, as
# python:3.11.17-slim-bookworm@sha256:<index digest>
# (`docker buildx imagetools inspect python:3.11.17-slim-bookworm` prints it);
# tests/unit/test_dockerfile.py then insists that every FROM carries one.
# tests/unit/test_dockerfile.py holds this file to its promises.

# ---------------------------------------------------------------------------- build stage
FROM python:3.11.17-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
# Exactly what the wheel is built from (README.md is the package's long description).
COPY pyproject.toml README.md ./
COPY operator/ operator/

# The build backend is pinned here because pyproject.toml only asks for setuptools>=68.
# Dependencies come as wheels only (no compiler in this image) at the versions pyproject.toml
# pins. pip and setuptools leave the runtime venv; the three entry points must start.
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install setuptools==84.2.1 wheel==0.48.0 \
 && /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && python -m venv /opt/lvs-operator \
 && /opt/lvs-operator/bin/pip install --only-binary=:all: /wheels/lvs_operator-*.whl \
 && /opt/lvs-operator/bin/python -m pip uninstall --yes pip setuptools \
 && /opt/lvs-operator/bin/lvs-operator --help > /dev/null \
 && /opt/lvs-operator/bin/lvs-agent --help > /dev/null \
 && /opt/lvs-operator/bin/lvsctl --help > /dev/null

# ---------------------------------------------------------------------------- runtime stage
FROM python:3.11.17-slim-bookworm

# iptables: the agent's owned mangle/nat chains go through iptables-restore. Debian's package
# ships both iptables-nft and iptables-legacy; the agent uses the host's flavour, detected at
# run time. ipvsadm and ipset: to look at a node's kernel through an agent pod
# (`kubectl exec ds/lvs-operator-agent -- ipvsadm -Ln`). keepalived: spec.ha.mode VRRP (the
# agent generates its configuration and runs it in VRRP-only mode). Versions: Debian 12 (bookworm), as
# `apt-cache policy` showed them on a bookworm host with current bookworm, bookworm-updates
# and bookworm-security lists (amd64, 2026-11). If apt reports one as not found, Debian has
# published an update: take the new version from `apt-cache policy` in this base image.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install --yes --no-install-recommends \
      ipvsadm=1:1.31-1+b1 \
      ipset=7.17-1 \
      iptables=1.8.9-2 \
      keepalived=1:2.2.7-1+b2 \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/lvs-operator /opt/lvs-operator

ENV PATH=/opt/lvs-operator/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Build arguments last, so a new revision does not invalidate the layers above.
ARG REVISION=""
LABEL org.opencontainers.image.title="lvs-operator" \
      org.opencontainers.image.description="Linux Virtual Server (IPVS) managed the Kubernetes way" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.source="https://github.com/lvs-operator/lvs-operator" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.17-slim-bookworm"

USER 65532:65532
CMD ["lvs-operator"]
