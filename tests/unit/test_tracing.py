"""Tracing's switch and its off cost: on only when an OTLP endpoint or an exporter is named; off,
the services import no OpenTelemetry module beyond what redis-py imports itself (redis-py 8
loads the metrics SDK when it is installed, for its own opt-in metrics); a bad exporter is a
one-line refusal."""

from __future__ import annotations

import subprocess
import sys

import pytest

from taskbus.errors import ConfigError
from taskbus.settings import Settings
from taskbus.telemetry import tracing
from testkit.env import ROOT, clean_env


@pytest.mark.parametrize(("env", "on"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
    ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
])
def test_tracing_is_on_only_when_an_endpoint_or_an_exporter_is_named(env: dict[str, str], on: bool) -> None:
    assert tracing.enabled(Settings.from_env(env)) is on


def test_an_unknown_exporter_is_refused_in_one_line_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"OTEL_TRACES_EXPORTER": "zipkin"})
    assert str(refused.value) == "OTEL_TRACES_EXPORTER='zipkin' is invalid: expected otlp or console or none"


OFF = """
import sys
import redis
by_redis = {name for name in sys.modules if name.startswith("opentelemetry")}
from taskbus.settings import Settings
from taskbus.telemetry import tracing
import taskbus.launch, taskbus.worker, taskbus.http.enqueue_api, taskbus.http.status_api, taskbus.admin.redrive
tracing.setup(Settings(), "worker")
assert tracing.tracer() is None
print(sorted(name for name in sys.modules if name.startswith("opentelemetry") and name not in by_redis))
"""


def test_off_the_services_import_nothing_of_opentelemetry() -> None:
    out = subprocess.run([sys.executable, "-c", OFF], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**clean_env(), "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
