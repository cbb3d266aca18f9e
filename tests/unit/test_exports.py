"""The public surface: `taskbus.__all__` is exactly what the README's Python API table lists,
and every name in it exists (httpx's test_exported_members, in spirit)."""

from __future__ import annotations

import re

import taskbus
from testkit.env import ROOT


def documented() -> set[str]:
    readme = (ROOT / "README.md").read_text("utf-8")
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])}


def test_all_is_what_the_readme_documents() -> None:
    assert set(taskbus.__all__) == documented()


def test_every_exported_name_exists_and_is_listed_once() -> None:
    assert len(taskbus.__all__) == len(set(taskbus.__all__))
    for name in taskbus.__all__:
        assert getattr(taskbus, name) is not None, name
