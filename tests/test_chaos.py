"""The short version of every fault scenario (`make chaos` runs the full sizes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.scenarios import SCENARIOS


@pytest.mark.timeout(180)
@pytest.mark.chaos  # `make test` runs these alone, one at a time, after the rest: they load the machine
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_keeps_every_invariant(name: str, tmp_path: Path) -> None:
    """A broken invariant (a lost task among them) raises `InvariantBroken` from the scenario."""
    figures = SCENARIOS[name](tmp_path, False)
    assert figures["tasks"] > 0, "the scenario ran no load: it tested nothing"
    if "loss_detected" in figures:  # a control that loses tasks on purpose: the loss is counted, or said absent
        assert figures["loss_detected"] == (figures["acknowledged_lost"] > 0)
        assert figures["loss_detected"] or "nothing was lost" in figures["note"]
