"""taskbus: serverless-style task functions wired together by Redis Streams."""

from taskbus.errors import ConfigError, TaskbusError, Unavailable
from taskbus.registry import Context, Registry
from taskbus.settings import Settings
from taskbus.store import Store
from taskbus.task import TaskSpec
from taskbus.worker import Worker

__all__ = [
    "ConfigError",
    "Context",
    "Registry",
    "Settings",
    "Store",
    "TaskSpec",
    "TaskbusError",
    "Unavailable",
    "Worker",
]
