"""taskbus: serverless-style task functions wired together by a channel (Redis Streams or Kafka)
with Redis as the task-state store.

The data path, one package each: `http` (the enqueue and status functions) → `enqueue`
(record a task, hand it to the channel's outlet) → `channel` (Redis Streams or Kafka) →
`worker` (run handlers, write fenced outcomes) → `state` (Redis: scripts, status reads); and
`admin`, the operators' operations (overview, listings, cancel, retry, pause, purge, re-drive).
"""

from taskbus.client import Client, Enqueued
from taskbus.errors import (
    Cancelled,
    ConfigError,
    DataLost,
    PermanentError,
    TaskbusError,
    Unavailable,
    ValidationError,
)
from taskbus.registry import Context, Registry
from taskbus.settings import Settings
from taskbus.task import TaskSpec
from taskbus.worker import Worker

__all__ = [
    "Cancelled",
    "Client",
    "ConfigError",
    "Context",
    "DataLost",
    "Enqueued",
    "PermanentError",
    "Registry",
    "Settings",
    "TaskSpec",
    "TaskbusError",
    "Unavailable",
    "ValidationError",
    "Worker",
]
