"""The Kafka offset book without a broker: what may be committed after gaps, revocations and
lost partitions (a commit past an unfinished record would lose it on a crash)."""

from __future__ import annotations

from taskbus.channel.kafka.offsets import OffsetBook, entry_of, parse_entry

A, B = ("taskbus.q", 0), ("taskbus.q", 1)


def book_with(*partitions: tuple[str, int]) -> OffsetBook:
    book = OffsetBook()
    book.assign(partitions)
    return book


def read(book: OffsetBook, tp: tuple[str, int], *offsets: int) -> list[str]:
    assert all(book.read(tp, o) for o in offsets)
    return [entry_of(*tp, o) for o in offsets]


def test_entries_round_trip() -> None:
    assert parse_entry(entry_of("taskbus.a.b", 3, 42)) == (("taskbus.a.b", 3), 42)


def test_nothing_is_committed_before_an_outcome() -> None:
    book = book_with(A)
    read(book, A, 0, 1, 2)
    assert book.positions() == {}


def test_the_commit_stops_at_the_first_record_without_an_outcome() -> None:
    book = book_with(A)
    e = read(book, A, 0, 1, 2, 3)
    book.done([e[0], e[1], e[3]])  # offset 2 is still running
    assert book.positions() == {A: 2}
    assert book.positions() == {}, "a position is given once"
    book.done([e[2]])
    assert book.positions() == {A: 4}, "the gap closed: everything up to 3 is done"


def test_gaps_in_offsets_are_not_holes() -> None:
    """Offsets skip (compaction, transactions' control records): only read offsets count."""
    book = book_with(A)
    e = read(book, A, 10, 13, 20)
    book.done(e)
    assert book.positions() == {A: 21}


def test_partitions_are_independent() -> None:
    book = book_with(A, B)
    a, b = read(book, A, 0, 1), read(book, B, 0)
    book.done([a[1], b[0]])
    assert book.positions() == {B: 1}, "A waits for offset 0, B does not"


def test_a_revoked_partition_is_never_committed_for() -> None:
    book = book_with(A, B)
    a, b = read(book, A, 0), read(book, B, 0)
    book.forget([A])  # revoked: its next owner reads offset 0 again
    book.done(a + b)  # the outcome was recorded after the revocation
    assert book.positions() == {B: 1}
    assert not book.owns(A) and book.owns(B)


def test_records_fetched_for_a_lost_partition_are_refused() -> None:
    book = book_with(A)
    book.forget([A])  # the session timed out: the partition is another member's now
    assert book.read(A, 5) is False
    assert book.positions() == {}


def test_a_partition_assigned_again_starts_a_fresh_book() -> None:
    book = book_with(A)
    e = read(book, A, 0, 1)
    book.done(e)
    assert book.positions() == {A: 2}
    book.forget([A])
    book.assign([A])  # back, after the other owner committed further
    later = read(book, A, 7)
    book.done(later)
    assert book.positions() == {A: 8}


def test_positions_can_be_asked_for_some_partitions_only() -> None:
    book = book_with(A, B)
    book.done(read(book, A, 0) + read(book, B, 0))
    assert book.positions([B]) == {B: 1}, "a revocation commits only what it gives up"
    assert book.positions() == {A: 1}
