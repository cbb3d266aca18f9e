"""A small process supervisor for `make up`: start services, stream their output with a
prefix, and stop them in a given order.

Why not honcho's `Manager`, which ran the stack before: it starts every process in its own
process group and, on Ctrl-C or when one exits, sends SIGTERM to all of them at once. The
embedded Valkey then stops while the worker is still draining, and the worker's last outcomes
have nowhere to go. Here each service runs in a session of its own, so a terminal's Ctrl-C
reaches only this process, which stops the services in order: the functions, then the worker
(it drains for GRACE_S), and the servers last. honcho's `Printer` still formats the output.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import os
import signal
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from honcho.colour import get_colours
from honcho.printer import Message, Printer

from local.embedded import die_with_parent

SYSTEM = "local"  # the prefix of the supervisor's own lines


@dataclass
class Service:
    """One long-running process of the stack and how it is stopped."""

    name: str
    argv: Sequence[str]
    env: dict[str, str]
    cwd: Path
    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 10.0  # after this long it is SIGKILLed


@dataclass
class Child:
    service: Service
    popen: subprocess.Popen[bytes]
    lines: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=200))
    reader: threading.Thread | None = None
    reported: bool = False  # its exit has been said

    @property
    def name(self) -> str:
        return self.service.name

    def running(self) -> bool:
        return self.popen.poll() is None

    def has_said(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def last_line(self) -> str:
        """Its last non-empty line of output (a traceback's last line is its exception)."""
        for line in reversed(list(self.lines)):
            if line.strip():
                return line.strip()
        return "(no output)"


class Supervisor:
    def __init__(self, printer: Printer | None = None) -> None:
        self.printer = printer or Printer()
        self.printer.width = len("enqueue")  # the longest service name: the columns do not move as they start
        self.children: dict[str, Child] = {}
        self.changed = threading.Event()  # set when a child exits or a stop is asked for
        self._print_lock = threading.Lock()
        self._colours = get_colours()

    # -- output ---------------------------------------------------------------------------

    def say(self, text: str, name: str = SYSTEM, colour: str | None = None) -> None:
        """Print one prefixed line; a terminal that went away (SIGHUP) must not stop the stop."""
        with self._print_lock, contextlib.suppress(OSError, ValueError):
            self.printer.write(Message("line", text, datetime.datetime.now(), name, colour))

    # -- starting -------------------------------------------------------------------------

    def start(self, service: Service) -> Child:
        """Start `service` in a session of its own (a terminal's Ctrl-C does not reach it; we
        stop it), dying with this process if this process is killed. Call from the main thread:
        the death signal follows the thread that forked."""
        self.printer.width = max(self.printer.width, len(service.name))
        popen = subprocess.Popen(list(service.argv), env=service.env, cwd=service.cwd, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                 preexec_fn=die_with_parent)
        child = Child(service, popen)
        colour = next(self._colours)
        assert popen.stdout is not None
        child.reader = threading.Thread(target=self._relay, args=(child, popen.stdout, colour), daemon=True,
                                        name=f"relay-{service.name}")
        child.reader.start()
        self.children[service.name] = child
        self.say(f"{service.name} started (pid {popen.pid})")
        return child

    def _relay(self, child: Child, stream: IO[bytes], colour: str) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            child.lines.append(line)
            self.say(line, child.name, colour)
        child.popen.wait()
        self.changed.set()

    def exited(self) -> Child | None:
        """A child that has exited (and whose output has all been relayed), if any."""
        for child in self.children.values():
            if not child.running() and (child.reader is None or not child.reader.is_alive()):
                return child
        return None

    # -- stopping -------------------------------------------------------------------------

    def stop(self, stages: Iterable[Sequence[str]], force: threading.Event) -> bool:
        """Stop the children stage by stage: every child of a stage is signalled, and the next
        stage starts once all of them have exited. A child still running at its timeout, or
        when `force` is set (a second Ctrl-C), is SIGKILLed with its process group — except in
        the last stage, the servers, which are always given their clean stop (Valkey's is
        quick, and it is what keeps the data). True if every child stopped on its own."""
        clean = True
        stages = [list(stage) for stage in stages]
        for index, stage in enumerate(stages):
            last = index == len(stages) - 1
            children = [self.children[n] for n in stage if n in self.children]
            for child in children:
                if child.running():
                    with contextlib.suppress(ProcessLookupError):
                        child.popen.send_signal(child.service.stop_signal)
            for child in children:
                clean &= self._await_exit(child, None if last else force)
        return clean

    def _await_exit(self, child: Child, force: threading.Event | None) -> bool:
        deadline = child.service.stop_timeout_s
        waited = 0.0
        step = 0.1
        while child.running() and waited < deadline and not (force is not None and force.is_set()):
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(step)  # blocking wait on the child itself, a step at a time to see `force`
            waited += step
        own = not child.running()
        if not own:
            reason = "a second Ctrl-C" if force is not None and force.is_set() else f"{deadline:g} s"
            self.say(f"{child.name} still running after {reason}: killing it")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.popen.pid, signal.SIGKILL)
            child.popen.wait(10)
        if child.reader is not None:
            child.reader.join(5)  # its last lines are printed before we say it exited
        if not child.reported:
            child.reported = True
            self.say(f"{child.name} exited (rc={child.popen.returncode})")
        return own

    def kill_all(self) -> None:
        """Last resort (an error in this process): nothing may outlive the stack."""
        for child in self.children.values():
            if child.running():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.popen.pid, signal.SIGKILL)
                child.popen.wait(10)
