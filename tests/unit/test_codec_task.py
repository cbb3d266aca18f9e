"""Unit tests of the strict JSON decoder and the task model (no HTTP, no Redis)."""

from __future__ import annotations

import json
import re

import pytest

from taskbus import codec
from taskbus.errors import BadRequest, RequestError, ValidationError
from taskbus.http import status_of
from taskbus.task import ID_RE, TaskSpec, check_idempotency_key, iso, new_id, parse_spec, queue_of

HEX = "0123456789abcdef" * 2


def nested(depth: int, open_: str = "[", close: str = "]", leaf: str = "") -> bytes:
    """A JSON text whose deepest container sits at `depth` (1 = the top-level container)."""
    return (open_ * depth + leaf + close * depth).encode()


def nested_objects(depth: int) -> bytes:
    return ('{"a":' * depth + "1" + "}" * depth).encode()


# --------------------------------------------------------------------------- loads_strict: accepted


@pytest.mark.parametrize("body, expected", [
    (b"{}", {}),
    (b"[]", []),
    (b"null", None),
    (b"true", True),
    (b"0", 0),
    (b"-0.0", -0.0),
    (b"1.5e-300", 1.5e-300),
    (b"1e19", 1e19),  # integral, and within the 64-bit range however it is written
    (b"1e-999", 0.0),  # underflow is finite
    (b'"caf\xc3\xa9"', "café"),
    (b'"\\ud83d\\ude00"', "\U0001F600"),  # an escaped surrogate *pair* is fine
    ('{"k": "\U0001F600"}'.encode(), {"k": "\U0001F600"}),
    (b' {"a": [1, {"b": null}], "c": "d"} \n', {"a": [1, {"b": None}], "c": "d"}),
    (b'{"a": 1, "A": 2}', {"a": 1, "A": 2}),  # keys are case-sensitive: not duplicates
    (b'{"a": {"x": 1}, "b": {"x": 2}}', {"a": {"x": 1}, "b": {"x": 2}}),  # same key in sibling objects
])
def test_loads_strict_accepts_valid_json(body: bytes, expected: object) -> None:
    assert codec.loads_strict(body) == expected


def test_loads_strict_accepts_nesting_of_exactly_max_depth() -> None:
    assert codec.MAX_DEPTH == 64
    value = codec.loads_strict(nested(64))
    depth = 0
    while isinstance(value, list):
        depth += 1
        value = value[0] if value else None
    assert depth == 64
    assert isinstance(codec.loads_strict(nested_objects(64)), dict)
    mixed = ("[{\"a\":" * 32 + "1" + "}]" * 32).encode()  # 64 containers, alternating
    assert isinstance(codec.loads_strict(mixed), list)


# --------------------------------------------------------------------------- loads_strict: refused


BAD_BODIES = {
    "empty": b"",
    "whitespace": b"   ",
    "truncated": b'{"type": "t",',
    "trailing garbage": b"{} x",
    "two documents": b"{}{}",
    "single quotes": b"{'a': 1}",
    "trailing comma": b"[1,]",
    "comment": b"[1] // no",
    "bare word": b"hello",
    "invalid utf-8 ff": b"\xff\xfe",
    "invalid utf-8 in string": b'{"type": "t\xc3"}',
    "overlong utf-8": b'"\xc0\xaf"',
    "utf-8 encoded surrogate": b'"\xed\xa0\x80"',
    "utf-16 body": '{"a": 1}'.encode("utf-16"),
    "utf-8 bom": b"\xef\xbb\xbf{}",
    "NaN": b'{"x": NaN}',
    "Infinity": b'{"x": Infinity}',
    "-Infinity": b'[-Infinity]',
    "1e999": b'{"x": 1e999}',
    "-1e999": b"-1e999",
    "1E400 top level": b"1E400",
    "long float overflow": b"1" + b"0" * 400 + b".0",
    "integer too long": b"1" * 5000,
    "duplicate top-level key": b'{"type": "t", "type": "u"}',
    "duplicate nested key": b'{"payload": {"a": 1, "a": 1}}',
    "duplicate key in list item": b'[{"k": 1}, {"k": 1, "k": 2}]',
    "lone high surrogate": b'{"payload": "\\ud800"}',
    "lone low surrogate": b'["\\udc00"]',
    "reversed surrogate pair": b'"\\ude00\\ud83d"',
    "lone surrogate in key": b'{"\\ud800": 1}',
    "lone surrogate deep": b'{"a": [[{"b": ["x\\udbffy"]}]]}',
    "nesting 65 lists": nested(65),
    "nesting 65 objects": nested_objects(65),
    "nesting 65 in a payload": b'{"type": "t", "payload": ' + nested(64) + b"}",
    "nesting 1000": nested(1000),
    "nesting 100000 lists": nested(100_000),
    "nesting 100000 objects": nested_objects(100_000),
    "nesting 100000 unclosed": b"[" * 100_000,
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_loads_strict_refuses_with_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        codec.loads_strict(body)
    error = info.value
    assert isinstance(error, RequestError)
    assert status_of(error) == 400 and error.code == "bad_request"
    assert isinstance(error.message, str) and error.message
    assert len(error.message) < 1000  # a reason, not an echo of the body


@pytest.mark.parametrize("body, words", [
    (b"\xff", "UTF-8"),
    (b'{"x": NaN}', "NaN"),
    (b'{"x": 1e999}', "range"),
    (b'{"a": 1, "a": 2}', "duplicate"),
    (b'"\\ud800"', "surrogate"),
    (nested(65), "nesting"),
    (nested(100_000), "nesting"),
    (b"{", "malformed"),
])
def test_loads_strict_says_why(body: bytes, words: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(words)):
        codec.loads_strict(body)


def test_loads_strict_values_of_64_bit_range_round_trip_through_dumps() -> None:
    for text in (b"9223372036854775807", b"-9223372036854775808", b"18446744073709551615"):
        assert codec.loads(codec.dumps(codec.loads_strict(text))) == json.loads(text)


@pytest.mark.parametrize("text", [b"18446744073709551616", b"-9223372036854775809", b"1" + b"0" * 100])
def test_every_value_loads_strict_accepts_can_be_dumped(text: bytes) -> None:
    try:
        value = codec.loads_strict(text)
    except BadRequest:
        return  # refusing is also a valid fix
    assert codec.loads(codec.dumps(value)) == value


# --------------------------------------------------------------------------- parse_spec


def test_parse_spec_defaults() -> None:
    spec = parse_spec({"type": "echo"})
    assert spec == TaskSpec(type="echo", payload={}, queue="default", max_attempts=5, timeout_s=300.0, delay_s=0.0,
                            defaults=frozenset({"max_attempts", "timeout_s"}))
    assert isinstance(spec.timeout_s, float) and isinstance(spec.delay_s, float)


@pytest.mark.parametrize("given, left_out", [
    ({"max_attempts": 2}, {"timeout_s"}),
    ({"timeout_s": 1}, {"max_attempts"}),
    ({"max_attempts": 2, "timeout_s": 1}, set()),
])
def test_parse_spec_names_the_fields_left_to_the_handlers_defaults(given: dict[str, int], left_out: set[str]) -> None:
    assert parse_spec({"type": "echo", **given}).defaults == left_out


@pytest.mark.parametrize("given, priority", [({}, 5), ({"priority": 0}, 0), ({"priority": 9}, 9),
                                             ({"priority": 7.0}, 7)])
def test_parse_spec_priority(given: dict[str, float], priority: int) -> None:
    spec = parse_spec({"type": "echo", **given})
    assert spec.priority == priority and isinstance(spec.priority, int)


def test_parse_spec_uses_the_callers_defaults() -> None:
    spec = parse_spec({"type": "echo"}, default_max_attempts=9, default_timeout_s=12.5)
    assert spec.max_attempts == 9 and spec.timeout_s == 12.5


def test_parse_spec_all_fields() -> None:
    body = {"type": "a.b:c-d_E9", "payload": {"x": [1, None]}, "queue": "Q_1.2:3-x",
            "max_attempts": 100, "timeout_s": 2, "delay_s": 1.5}
    spec = parse_spec(body)
    assert spec == TaskSpec(type="a.b:c-d_E9", payload={"x": [1, None]}, queue="Q_1.2:3-x",
                            max_attempts=100, timeout_s=2.0, delay_s=1.5)
    assert isinstance(spec.timeout_s, float)


@pytest.mark.parametrize("payload", [None, 0, "", [], [1, "a"], {"nested": {"k": True}}, 1.5, "text"])
def test_parse_spec_payload_is_any_json(payload: object) -> None:
    assert parse_spec({"type": "t", "payload": payload}).payload == payload


@pytest.mark.parametrize("field, value", [
    ("max_attempts", 1), ("max_attempts", 100),
    ("timeout_s", 0.001), ("timeout_s", 86400), ("timeout_s", 1),
    ("delay_s", 0), ("delay_s", 0.0), ("delay_s", 0.25), ("delay_s", 366 * 86400),
    ("type", "x"), ("type", "t" * 128), ("queue", "q"), ("queue", "q" * 128),
])
def test_parse_spec_accepts_boundaries(field: str, value: object) -> None:
    spec = parse_spec({"type": "t", field: value})
    assert getattr(spec, field) == value


def test_parse_spec_accepts_extra_fields_named_by_caller() -> None:
    assert parse_spec({"type": "t", "callback": "x"}, extra=frozenset({"callback"})).type == "t"


INVALID_SPECS = [
    # (body, field named in the error)
    ({}, "type"),
    ({"payload": {}}, "type"),
    ({"type": "bad type!"}, "type"),
    ({"type": ""}, "type"),
    ({"type": "t" * 129}, "type"),
    ({"type": 5}, "type"),
    ({"type": None}, "type"),
    ({"type": ["t"]}, "type"),
    ({"type": "tâche"}, "type"),
    ({"type": "t\n"}, "type"),
    ({"type": "a/b"}, "type"),
    ({"type": "a~b"}, "type"),
    ({"type": "t", "queue": "q" * 129}, "queue"),
    ({"type": "t", "queue": ""}, "queue"),
    ({"type": "t", "queue": "bad queue"}, "queue"),
    ({"type": "t", "queue": "a{b}"}, "queue"),
    ({"type": "t", "queue": "a~b"}, "queue"),
    ({"type": "t", "queue": None}, "queue"),
    ({"type": "t", "queue": 7}, "queue"),
    ({"type": "t", "max_attempts": 0}, "max_attempts"),
    ({"type": "t", "max_attempts": 101}, "max_attempts"),
    ({"type": "t", "max_attempts": -1}, "max_attempts"),
    ({"type": "t", "max_attempts": True}, "max_attempts"),
    ({"type": "t", "max_attempts": False}, "max_attempts"),
    ({"type": "t", "max_attempts": "5"}, "max_attempts"),
    ({"type": "t", "max_attempts": 2.5}, "max_attempts"),
    ({"type": "t", "max_attempts": 5.5}, "max_attempts"),
    ({"type": "t", "max_attempts": None}, "max_attempts"),
    ({"type": "t", "timeout_s": 0}, "timeout_s"),
    ({"type": "t", "timeout_s": 0.0}, "timeout_s"),
    ({"type": "t", "timeout_s": -1}, "timeout_s"),
    ({"type": "t", "timeout_s": True}, "timeout_s"),
    ({"type": "t", "timeout_s": "1"}, "timeout_s"),
    ({"type": "t", "timeout_s": None}, "timeout_s"),
    ({"type": "t", "timeout_s": float("nan")}, "timeout_s"),
    ({"type": "t", "timeout_s": float("inf")}, "timeout_s"),
    ({"type": "t", "timeout_s": 86401}, "timeout_s"),
    ({"type": "t", "delay_s": -1}, "delay_s"),
    ({"type": "t", "delay_s": -0.001}, "delay_s"),
    ({"type": "t", "delay_s": True}, "delay_s"),
    ({"type": "t", "delay_s": "0"}, "delay_s"),
    ({"type": "t", "delay_s": None}, "delay_s"),
    ({"type": "t", "delay_s": float("nan")}, "delay_s"),
    ({"type": "t", "delay_s": float("inf")}, "delay_s"),
    ({"type": "t", "delay_s": 366 * 86400 + 1}, "delay_s"),
    ({"type": "t", "priority": 10}, "priority"),
    ({"type": "t", "priority": "1"}, "priority"),
    ({"type": "t", "urgency": 1}, "urgency"),
    ({"type": "t", "id": "x"}, "id"),
    ({"type": "t", "Type": "x"}, "Type"),
    ([{"type": "t"}], "body"),
    ([], "body"),
    ("t", "body"),
    (None, "body"),
    (1, "body"),
]


@pytest.mark.parametrize("body, field", INVALID_SPECS, ids=[repr(b)[:60] for b, _ in INVALID_SPECS])
def test_parse_spec_refuses_and_names_the_field(body: object, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_spec(body)
    error = info.value
    assert status_of(error) == 422 and error.code == "validation_error"
    assert error.field == field
    assert error.message.startswith(f"{field}:")


def test_parse_spec_unknown_field_wins_and_is_truncated() -> None:
    long_name = "z" * 500
    with pytest.raises(ValidationError) as info:
        parse_spec({long_name: 1})  # no type either: the unknown field is reported first
    assert info.value.field == "z" * 64


# --------------------------------------------------------------------------- ids


def test_new_id_names_its_queue_and_is_unique() -> None:
    ids = {new_id("my.queue:1") for _ in range(2000)}
    assert len(ids) == 2000
    for task_id in ids:
        assert re.fullmatch(r"my\.queue:1~[0-9a-f]{32}", task_id)
        assert queue_of(task_id) == "my.queue:1"


@pytest.mark.parametrize("queue", ["default", "q", "Q_1.2:3-x", "q" * 128])
def test_queue_of_round_trips(queue: str) -> None:
    assert queue_of(new_id(queue)) == queue
    assert queue_of(f"{queue}~{HEX}") == queue


@pytest.mark.parametrize("task_id", [
    "", "nope", "..", "%2e%2e", "\x00", "a" * 1024, "default~XYZ", "default~", "~" + HEX,
    f"default~{HEX[:31]}", f"default~{HEX}0", f"default~{HEX.upper()}", f"default~{HEX[:31]}g",
    f"default~{HEX}\n", f"\ndefault~{HEX}", f" default~{HEX}", f"default ~{HEX}",
    f"a/b~{HEX}", f"default~{HEX}/x", f"a~b~{HEX}", f"{'q' * 129}~{HEX}", f"café~{HEX}",
    f"default-{HEX}", f"{{q}}~{HEX}", f"default~{HEX}\x00",
])
def test_queue_of_refuses_malformed_ids(task_id: str) -> None:
    assert queue_of(task_id) is None
    assert ID_RE.fullmatch(task_id) is None


# --------------------------------------------------------------------------- idempotency keys and iso


@pytest.mark.parametrize("key", ["k", "!", "~" * 255, "a b", "key-1:2/3?x=y", "A" * 254 + "Z"])
def test_idempotency_key_accepted(key: str) -> None:
    assert check_idempotency_key("Idempotency-Key", key) == key


@pytest.mark.parametrize("key", ["", "k" * 256, "a\x01b", "\x01", " k", "k ", " ", "a\tb", "é", "a\x7fb",
                                 "a\nb", None, 5])
def test_idempotency_key_refused(key: object) -> None:
    with pytest.raises(ValidationError) as info:
        check_idempotency_key("Idempotency-Key", key)
    assert info.value.field == "Idempotency-Key"


def test_iso_is_utc_with_milliseconds_and_z() -> None:
    assert iso("1700000000123") == "2023-11-14T22:13:20.123Z"
    assert iso("0") == "1970-01-01T00:00:00.000Z"
    assert iso(None) is None and iso("") is None


def test_integral_numbers_obey_the_64_bit_range_however_written() -> None:
    for text in (b"1e308", b"1.8446744073709552e19", b"-1e19"):
        with pytest.raises(BadRequest):
            codec.loads_strict(text)
    assert codec.loads_strict(b"1.5") == 1.5


def test_max_attempts_written_as_a_whole_float_is_that_integer() -> None:
    assert parse_spec({"type": "t", "max_attempts": 5.0}).max_attempts == 5
