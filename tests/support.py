"""Compatibility only: the old names of `testkit`, for test files not yet moved onto it
(test_http_contract, test_webhooks_http, test_abuse, test_openapi). New code imports testkit;
delete this module once nothing imports it."""

from __future__ import annotations

from pathlib import Path

from taskbus.settings import Settings
from testkit import functions
from testkit.env import ROOT, env_of
from testkit.procs import Proc, spawn, stop, wait_until
from testkit.settings import kafka_settings

__all__ = ["ROOT", "Proc", "env_of", "kafka_settings", "spawn", "start_function", "stop", "wait_until"]


def start_function(name: str, settings: Settings, log_dir: Path, wrapper: tuple[str, ...] = (),
                   **extra_env: str) -> tuple[Proc, str]:
    """`testkit.functions.start_function` with its environment as keyword arguments."""
    return functions.start_function(name, settings, log_dir, wrapper, env=extra_env)
