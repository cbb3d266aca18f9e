"""`python -m local.serve <enqueue|status|worker>`: run one service in the foreground
(the container image's entry point; the local runner starts each service this way)."""

from __future__ import annotations

import os
import sys

from local.commands import SERVICES, argv
from taskbus.settings import Settings


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in SERVICES:
        raise SystemExit(f"usage: python -m local.serve <{'|'.join(SERVICES)}>")
    command = argv(sys.argv[1], Settings.from_env())
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
