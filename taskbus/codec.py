"""JSON in and out. Strict on the way in (untrusted bytes), fast on the way out.

Strict means: UTF-8 only, no NaN/Infinity (nor numbers that overflow to them), no
duplicate keys, no lone surrogates, nesting at most `MAX_DEPTH`. Anything else is a
`BadRequest`, never an exception that would become a 500.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from taskbus.errors import BadRequest

MAX_DEPTH = 64


def dumps(value: Any) -> bytes:
    """Encode compact JSON. Values come from `loads_strict` or handlers, so they are JSON."""
    return orjson.dumps(value)


def loads(data: bytes | str) -> Any:
    """Decode JSON that taskbus wrote itself (task records, stream entries)."""
    return orjson.loads(data)


def loads_strict(body: bytes) -> Any:
    """Decode an untrusted body, raising `BadRequest` with a reason for any defect."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            parse_int=_int64,
        )
    except BadRequest:
        raise
    except RecursionError:
        raise BadRequest(f"JSON nesting deeper than {MAX_DEPTH}") from None
    except ValueError as exc:  # JSONDecodeError and int-too-long
        raise BadRequest(f"malformed JSON: {exc}") from None
    _check_tree(value)
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadRequest(f"duplicate key {key[:64]!r} in JSON object")
            seen.add(key)
    return result


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"number {text[:32]} is out of range")
    if value.is_integer() and not -(2**63) <= value < 2**64:  # the same rule however it is written
        raise BadRequest(f"number {text[:32]} is out of the 64-bit integer range")
    return value


def _int64(text: str) -> int:
    """Integers must fit in 64 bits: what orjson, JavaScript's BigInt-free peers and most
    languages reading a payload can represent."""
    value = int(text)
    if not -(2**63) <= value < 2**64:
        raise BadRequest(f"integer {text[:32]} is out of the 64-bit range")
    return value


def _check_tree(value: Any) -> None:
    """Walk without recursion: bound the depth and refuse lone surrogates."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            _check_text(node)
        elif isinstance(node, (dict, list)):
            if depth > MAX_DEPTH:
                raise BadRequest(f"JSON nesting deeper than {MAX_DEPTH}")
            if isinstance(node, dict):
                for key, item in node.items():
                    _check_text(key)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in node)


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("JSON string holds a lone surrogate") from None
