"""The local stack's admin key for the console: generated once per run directory into
`admin-key` (mode 0600, `local:<key>`), and handed to the console by ADMIN_KEYS_FILE so it
never shows in a process listing. ADMIN_KEYS or ADMIN_KEYS_FILE set by the user wins."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

LABEL = "local"  # what the audit trail names as the actor of the console's actions


def key_file(run_dir: Path) -> Path:
    return run_dir / "admin-key"


def dev_env(run_dir: Path, env: Mapping[str, str]) -> dict[str, str]:
    """`{"ADMIN_KEYS_FILE": path}` for the stack, or nothing when the user configured keys."""
    if env.get("ADMIN_KEYS") or env.get("ADMIN_KEYS_FILE"):
        return {}
    path = key_file(run_dir)
    if not path.is_file() or not path.read_text().strip():
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{LABEL}:{secrets.token_urlsafe(32)}\n")
    path.chmod(0o600)
    return {"ADMIN_KEYS_FILE": str(path)}


def bearer(path: Path) -> str:
    """The key part of the file's first `label:key` entry (what a client sends)."""
    return path.read_text().strip().splitlines()[0].partition(":")[2]
