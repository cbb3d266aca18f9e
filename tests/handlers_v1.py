"""The handlers of an older release: `echo` only, without the `record` type that tests.handlers
has (two workers with these two modules on one queue are a rolling deploy half done)."""

from __future__ import annotations

from typing import Any

from taskbus import Context, Registry

registry = Registry()


@registry.register("echo")
def echo(payload: Any, ctx: Context) -> Any:
    return payload
