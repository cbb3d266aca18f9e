"""Reading a `/metrics` page the way Prometheus does (prometheus_client's own text parser), for
tests that scrape real processes."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = list[tuple[str, dict[str, str], float]]


def parse(text: str) -> Samples:
    """Every sample of an exposition: (name, labels, value)."""
    return [(s.name, dict(s.labels), s.value) for family in text_string_to_metric_families(text)
            for s in family.samples]


def scrape(base_url: str, headers: Mapping[str, str] | None = None) -> Samples:
    reply = httpx.get(f"{base_url}/metrics", headers=dict(headers or {}), timeout=5)
    reply.raise_for_status()
    assert reply.headers["content-type"].startswith("text/plain"), reply.headers
    return parse(reply.text)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (what `sum()` gives)."""
    return sum(v for n, got, v in samples if n == name and all(got.get(k) == w for k, w in labels.items()))


def names(samples: Samples) -> set[str]:
    return {n for n, _, _ in samples}
