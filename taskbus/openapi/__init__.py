"""The OpenAPI 3.1 documents of the three functions, served at `GET /openapi.json`.

`enqueue.json`, `status.json` and `console.json` beside this file are the source: edit them, and
tests/test_openapi.py checks them against the real functions with schemathesis. What a
function serves is its file with the few values that follow from its settings filled in,
so the served document stays true to the running function:

- `wait`'s maximum is `MAX_WAIT_S`;
- the defaults of `max_attempts` and `timeout_s` are `DEFAULT_MAX_ATTEMPTS` and `DEFAULT_TIMEOUT_S`;
- with `API_KEYS` set (the console: `ADMIN_KEYS`), the keyed operations require `bearerAuth`
  instead of allowing none (all but `GET /metrics`, which stays open to loopback clients).
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
from typing import Any

from taskbus import codec
from taskbus.settings import Settings

FUNCTIONS = ("enqueue", "status", "console")
OPTIONAL_AUTH: list[dict[str, list[str]]] = [{}, {"bearerAuth": []}]
METRICS_PATH = "/metrics"  # open to loopback clients whatever the keys: its security stays optional


def load(name: str) -> dict[str, Any]:
    """The document of function `name` exactly as the file holds it."""
    if name not in FUNCTIONS:
        raise ValueError(f"unknown function {name!r}; expected one of {FUNCTIONS}")
    text = importlib.resources.files(__name__).joinpath(f"{name}.json").read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def document(name: str, settings: Settings) -> dict[str, Any]:
    """The document function `name` serves under `settings` (`encoded` gives it as JSON bytes)."""
    doc = copy.deepcopy(load(name))
    if name == "status":
        doc["components"]["parameters"]["Wait"]["schema"]["maximum"] = _number(settings.max_wait_s)
    elif name == "enqueue":
        fields = doc["components"]["schemas"]["TaskSpec"]["properties"]
        fields["max_attempts"]["default"] = settings.default_max_attempts
        fields["timeout_s"]["default"] = _number(settings.default_timeout_s)
    if settings.admin_keys if name == "console" else settings.api_keys:
        for path, path_item in doc["paths"].items():
            for operation in path_item.values() if path != METRICS_PATH else ():
                if operation.get("security") == OPTIONAL_AUTH:
                    operation["security"] = [{"bearerAuth": []}]
    return doc


@functools.lru_cache(maxsize=8)
def encoded(name: str, settings: Settings) -> bytes:
    return codec.dumps(document(name, settings))


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value
