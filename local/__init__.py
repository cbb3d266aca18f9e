"""The local runner: the whole stack without Docker (`make up`, `python -m local`)."""
