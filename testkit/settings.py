"""Settings overlays for runs that must react quickly (short leases, blocks and back-offs),
shared by the tests and the chaos suite."""

from __future__ import annotations

from local.embedded import EmbeddedKafka

# Worker tuning for tests: a SIGKILLed worker's task is reclaimed within about 2 s.
FAST: dict[str, object] = dict(lease_s=2.0, block_ms=200, backoff_base_s=0.05, backoff_max_s=0.2, grace_s=5.0,
                               concurrency=4, handlers="tests.handlers")


def kafka_settings(broker: EmbeddedKafka, **changes: object) -> dict[str, object]:
    """Settings changes for CHANNEL=kafka against `broker`, quick to react for tests (a 3 s
    session, a 10 ms fetch wait). Each test's queue is its own topic and consumer group."""
    return dict(channel="kafka", kafka_bootstrap_servers=broker.bootstrap, kafka_partitions=2,
                kafka_replication_factor=1, kafka_session_timeout_ms=3000, kafka_fetch_wait_ms=10,
                kafka_produce_timeout_s=2.0, kafka_outbox_age_s=3.0) | changes
