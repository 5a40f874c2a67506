"""A local Mosquitto for fedge: shipped configs and ACL (files/), rendered configs (config),
and a child-process runner (process) used by tests, the simulator and fault drills."""

from .config import BrokerConfig, TlsFiles, acl_text, render_config, shipped_text, write_config
from .errors import BrokerError, BrokerStartFailed, BrokerUnavailable
from .process import MosquittoProcess, find_mosquitto, free_port, require_mosquitto

__all__ = [
    "BrokerConfig",
    "BrokerError",
    "BrokerStartFailed",
    "BrokerUnavailable",
    "MosquittoProcess",
    "TlsFiles",
    "acl_text",
    "find_mosquitto",
    "free_port",
    "render_config",
    "require_mosquitto",
    "shipped_text",
    "write_config",
]
