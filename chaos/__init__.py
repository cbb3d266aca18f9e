"""Fault-injection suite: real processes, faults injected while work flows, invariants
checked against an oracle of every acknowledged task. `python -m chaos [--quick]`."""
