"""Health probes and Prometheus metrics shared by the operator and the agent: one small HTTP
server (/healthz, /readyz, /metrics) and the catalogue of exported series. Imports neither
the operator, the agent, nor any kernel code."""

from .http import Check, HealthServer, LoopWatch, address_arg, parse_address
from .metrics import AgentMetrics, OperatorMetrics, build_version

__all__ = [
    "AgentMetrics",
    "Check",
    "HealthServer",
    "LoopWatch",
    "OperatorMetrics",
    "address_arg",
    "build_version",
    "parse_address",
]
