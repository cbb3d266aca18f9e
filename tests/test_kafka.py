"""Compatibility only: `read_topic` moved to `testkit.client` (the Kafka tests are in
tests/e2e/test_kafka.py). Kept for tests/test_channel_contract.py; delete once it imports testkit."""

from testkit.client import read_topic

__all__ = ["read_topic"]
