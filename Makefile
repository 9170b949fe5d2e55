# lvs-operator: every entry point a person or CI uses.
# `make demo` installs everything and runs the main job; `make test` runs every test tier.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export LVS_CACHE ?= $(HOME)/.cache/lvs-operator
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: venv lint unit test demo plan bench-compile bench-kernel bench-e2e bench-ha crds clean image kind-e2e

$(STAMP): pyproject.toml
	@echo ">> creating the Python environment in $(VENV) (pip cache makes repeat runs fast)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check operator tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

# All tiers, with a per-tier summary at the end (tests/run_tiers.py).
test: $(STAMP)
	$(PY) tests/run_tiers.py

# The whole project on this machine: API server + operator on the host, agents and real IPVS
# in a qemu guest, every example applied, requests through a VIP (tests/harness/demo.py).
demo: $(STAMP)
	$(PY) -m tests.harness.demo

# Offline: what the examples compile to, as `ipvsadm -S -n` per node.
plan: $(STAMP)
	$(PY) -m lvs_operator.cli.lvsctl plan -f examples/ --format ipvsadm

bench-compile: $(STAMP)
	$(PY) bench/compile_bench.py

# In the VM (real IPVS): batched netlink against ipvsadm-restore, 100 to 10,000 services.
bench-kernel: $(STAMP)
	$(PY) bench/kernel_bench.py
	$(PY) -m tests.harness.vm run --memory 2048 --timeout 3600 -- \
		$(PY) bench/agent_pass_bench.py --sizes 100,1000,10000 | tee bench/results/agent_pass.txt

# kubectl create -> Programmed for 1/100/1000 VirtualServices (API server + operator here,
# agent and real IPVS in the guest), beside ipvsadm-restore of the same table.
bench-e2e: $(STAMP)
	$(PY) bench/e2e_bench.py

# Director failover: Lease mode with the default timings on this host (the agent's HA code
# and a real API server, no IPVS), then the whole system in the guest (Lease vs keepalived
# VRRP, agent killed / link cut) and dead-backend detection (our health checks vs
# keepalived's TCP_CHECK); median and max over runs.
bench-ha: $(STAMP)
	$(PY) bench/ha_lease_host.py
	$(PY) bench/ha_bench.py $(BENCH_ARGS)

# Regenerate crds/ (and the chart's copy) from the typed model (operator/lvs_operator/api/types.py)
# and the chart's RBAC rules from operator/lvs_operator/api/rbac.py.
CHART := charts/lvs-operator
crds: $(STAMP)
	$(PY) -m lvs_operator.api.crd crds $(CHART)/crds
	$(PY) -m lvs_operator.api.rbac $(CHART)/files/rbac.yaml

# The container image (Dockerfile): operator and agent, one image. Needs Docker.
image:
	docker build --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null) -t lvs-operator:dev .

# The Helm chart on a throwaway kind cluster (1 control plane, 2 workers): image built and
# loaded, chart installed, a NAT VirtualService programmed, requests through its VIP
# (tests/kind/kind_e2e.py; KIND_E2E_FLAGS=--keep keeps the cluster, --dry-run only prints
# the plan). Needs Docker; fails, naming the reason, where Docker does not run.
kind-e2e: $(STAMP)
	$(PY) -m tests.kind.kind_e2e $(KIND_E2E_FLAGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
