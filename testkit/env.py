"""The environment a child process sees: only the settings the run gives it.

A test run's own environment may hold anything (a developer's REDIS_URL, CI's WEBHOOK_*,
pytest's PYTEST_CURRENT_TEST); a child must not pick any of it up by accident.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from taskbus.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

# Every name a taskbus process or its framework reads, besides the Settings fields themselves:
# the functions-framework CLI (FUNCTION_*, and THREADS for its gunicorn), pytest's own, the
# custom-read settings (API_KEYS*, WEBHOOK_*), the OpenTelemetry SDK's OTEL_*.
STRIPPED_PREFIXES = ("FUNCTION_", "PYTEST_", "THREADS", "API_KEYS", "ADMIN_KEYS", "WEBHOOK_", "REDIS_", "KAFKA_",
                     "OTEL_")
_SETTING_NAMES = frozenset(field.name.upper() for field in dataclasses.fields(Settings))


def clean_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`environ` (default `os.environ`) without any variable that configures taskbus."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if not k.startswith(STRIPPED_PREFIXES) and k not in _SETTING_NAMES}


def setting_vars(settings: Settings, changed_only: bool = False) -> dict[str, str]:
    """The variables that make `Settings.from_env()` return `settings`; with `changed_only`, only
    those that differ from the defaults (what a user would set). API_KEYS and WEBHOOK_* are read
    by rules of their own: the tests that use them pass them explicitly."""
    defaults = Settings()
    env: dict[str, str] = {}
    for field in dataclasses.fields(settings):
        if field.metadata.get("env") == "custom":
            continue
        value = getattr(settings, field.name)
        if changed_only and value == getattr(defaults, field.name):
            continue
        env[field.name.upper()] = ",".join(value) if isinstance(value, tuple) else str(value)
    return env


def env_of(settings: Settings, changed_only: bool = False, **extra: str) -> dict[str, str]:
    """The whole environment of a child that runs with `settings` from the repository root."""
    return {**clean_env(), **setting_vars(settings, changed_only), "PYTHONPATH": str(ROOT), **extra}
