"""Which offsets may be committed: a record's offset is committed only once every record at or
below it in its partition has a recorded outcome, so a SIGKILLed worker's unfinished records go
to the next owner. Pure bookkeeping (no broker), shared by the control loop and the writer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

Partition = tuple[str, int]  # (topic, partition)


def entry_of(topic: str, partition: int, offset: int) -> str:
    """The delivery entry naming one record."""
    return f"{topic}/{partition}/{offset}"


def parse_entry(entry: str) -> tuple[Partition, int]:
    topic, partition, offset = entry.rsplit("/", 2)
    return (topic, int(partition)), int(offset)


class OffsetBook:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._books: dict[Partition, dict[int, bool]] = {}  # read offsets -> outcome recorded
        self._committed: dict[Partition, int] = {}
        self._assignment: set[Partition] = set()

    def owns(self, tp: Partition) -> bool:
        return tp in self._assignment

    def assign(self, partitions: Iterable[Partition]) -> None:
        self._assignment.update(partitions)

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Partitions given up: their books go (the next owner reads those records again)."""
        gone = set(partitions)
        with self._lock:
            self._assignment -= gone
            for tp in gone:
                self._books.pop(tp, None)
                self._committed.pop(tp, None)

    def read(self, tp: Partition, offset: int) -> bool:
        """Book a record just read; False when its partition is no longer ours (fetched before a
        rebalance took it away: its new owner reads it)."""
        if tp not in self._assignment:
            return False
        with self._lock:
            self._books.setdefault(tp, {})[offset] = False
        return True

    def done(self, entries: Iterable[str]) -> None:
        """Outcomes recorded for these records (entries of forgotten partitions are ignored)."""
        with self._lock:
            for entry in entries:
                tp, offset = parse_entry(entry)
                book = self._books.get(tp)
                if book is not None and offset in book:
                    book[offset] = True

    def positions(self, partitions: Iterable[Partition] | None = None) -> dict[Partition, int]:
        """Per partition of ours, the new commit position (the offset after the last record of an
        unbroken run of recorded outcomes), where it moved since the last call."""
        out: dict[Partition, int] = {}
        with self._lock:
            for tp in list(self._books) if partitions is None else partitions:
                book = self._books.get(tp)
                if not book or tp not in self._assignment:
                    continue  # a commit for a partition another member owns would skip its records
                position = None
                for offset in sorted(book):
                    if not book[offset]:
                        break
                    del book[offset]
                    position = offset + 1
                if position is not None and position > self._committed.get(tp, -1):
                    self._committed[tp] = position
                    out[tp] = position
        return out
