"""`python -m chaos [--quick] [scenario ...]`: run the fault scenarios, one line of figures
each; exit 1 if any invariant breaks."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

from chaos.scenarios import SCENARIOS


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos")
    parser.add_argument("--quick", action="store_true", help="the short versions that make test runs")
    parser.add_argument("scenarios", nargs="*", choices=[[], *SCENARIOS], default=[])
    args = parser.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory(prefix="chaos-") as scratch:
        for name in args.scenarios or list(SCENARIOS):
            began = time.monotonic()
            try:
                figures = SCENARIOS[name](Path(scratch) / name, not args.quick)
                line = {"scenario": name, "ok": True, **figures}
            except Exception as exc:  # noqa: BLE001 - report every scenario, then fail
                failed += 1
                traceback.print_exc()
                line = {"scenario": name, "ok": False, "error": str(exc)[:500]}
            line["seconds"] = round(time.monotonic() - began, 1)
            print(json.dumps(line), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
