"""Every process a bench run starts, in its own process group, killed on any exit path
(`testkit.procs` underneath, as for the tests and the chaos suite)."""

from __future__ import annotations

import atexit
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

import testkit.procs
from testkit.env import ROOT

__all__ = ["BIN", "ROOT", "HostLoad", "Proc", "cleanup_on_exit", "cpu_seconds", "running", "stop_all", "wait_for"]

BIN = Path(sys.executable).parent


class Proc(testkit.procs.Proc):
    """A testkit process (its own process group, killed with the run) with what only the bench
    measures: its process tree, for CPU and RSS figures."""

    def tree(self) -> list[psutil.Process]:
        """This process and all its descendants now alive."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, SIGKILL it after `timeout`; also reaps the leader."""
        super().stop(timeout)


def stop_all() -> None:
    """Stop every process still running, newest first."""
    for proc in reversed(testkit.procs.live()):
        proc.stop(timeout=5)


@contextlib.contextmanager
def cleanup_on_exit() -> Iterator[None]:
    """Stop every started process on return, exception, SIGTERM or SIGINT."""

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    atexit.register(stop_all)
    try:
        yield
    finally:
        stop_all()
        for s, handler in old.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[tuple[Proc, ...]]:
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()


def cpu_seconds(procs: Sequence[psutil.Process]) -> dict[int, float]:
    """user+system CPU seconds of each process (by pid) that is still alive."""
    out: dict[int, float] = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return out


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, proc: Proc | None = None, interval: float = 0.02
) -> Any:
    """`testkit.procs.wait_until`, failing with a RuntimeError: a bench run reports it and goes on."""
    try:
        return testkit.procs.wait_until(predicate, timeout, interval, what, proc)
    except testkit.procs.WaitTimedOut as exc:
        raise RuntimeError(str(exc)) from None


class HostLoad:
    """Samples, every `interval` s, how much CPU processes *outside* this bench's process tree
    use (system busy time minus ours), so a run perturbed by other work on the host says so."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.me = psutil.Process()
        self.samples: list[tuple[float, float]] = []  # (monotonic time, foreign cores over the last interval)
        self._seen: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="host-load")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _ours(self) -> float:
        """CPU seconds of this process and every descendant ever seen (the last value seen for
        one that has exited), so a process that ends does not look like CPU given back."""
        try:
            t = self.me.cpu_times()
            own = t.user + t.system
            for child in self.me.children(recursive=True):
                try:
                    c = child.cpu_times()
                    self._seen[(child.pid, child.create_time())] = c.user + c.system
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            own = 0.0
        return own + sum(self._seen.values())

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    def _run(self) -> None:
        last_t, last_busy, last_ours = time.monotonic(), self._busy(), self._ours()
        while not self._stop.wait(self.interval):
            now, busy, ours = time.monotonic(), self._busy(), self._ours()
            foreign = max(0.0, (busy - last_busy) - (ours - last_ours)) / (now - last_t)
            foreign = min(foreign, float(psutil.cpu_count() or 1))
            self.samples.append((now, foreign))
            last_t, last_busy, last_ours = now, busy, ours

    def between(self, t0: float, t1: float) -> tuple[float, float]:
        """Mean and max foreign cores in [t0, t1] (monotonic)."""
        window = [f for t, f in self.samples if t0 <= t <= t1 + self.interval]
        return (sum(window) / len(window), max(window)) if window else (0.0, 0.0)
