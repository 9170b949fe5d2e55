"""Health probes, Prometheus metrics and log output shared by the operator and the agent: one
small HTTP server (/healthz, /readyz, /metrics), the catalogue of exported series (including
the per-service IPVS series read at scrape time) and the text/JSON log formats. Imports
neither the operator, the agent, nor any kernel code (the IPVS table is passed in)."""

from .http import Check, HealthServer, LoopWatch, PassWatch, address_arg, parse_address
from .ipvs_metrics import IPVSCollector
from .logs import LOG_FORMATS, JsonFormatter, configure_logging, object_ref
from .metrics import OPERATION_KINDS, AgentMetrics, OperatorMetrics, build_version

__all__ = [
    "LOG_FORMATS",
    "OPERATION_KINDS",
    "AgentMetrics",
    "Check",
    "HealthServer",
    "IPVSCollector",
    "JsonFormatter",
    "LoopWatch",
    "OperatorMetrics",
    "PassWatch",
    "address_arg",
    "build_version",
    "configure_logging",
    "object_ref",
    "parse_address",
]
