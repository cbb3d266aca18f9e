"""Payload redaction by field path (CONSOLE_REDACT=card.number,password), for any surface that
shows a task's payload to people: the console's API and dashboard, the `taskbus show` command.

A path is dotted keys from the payload's top: `card.number` hides `payload["card"]["number"]`.
A list on the way applies the rest of the path to each of its items (`items.card.number` hides
the number of every item's card), so a path means the same whatever the list lengths. What a
path does not reach is left as it is; the original is never changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

MASK = "***"


def redact(value: Any, paths: Iterable[str]) -> Any:
    """A copy of `value` with every field a path reaches replaced by MASK."""
    for path in paths:
        parts = [part for part in path.split(".") if part]
        if parts:
            value = _masked(value, parts)
    return value


def _masked(value: Any, parts: Sequence[str]) -> Any:
    if isinstance(value, list):
        return [_masked(item, parts) for item in value]
    if not isinstance(value, dict) or parts[0] not in value:
        return value
    head, rest = parts[0], parts[1:]
    return {**value, head: _masked(value[head], rest) if rest else MASK}
