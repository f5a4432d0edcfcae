"""Who a token belongs to, without keeping the token: per-account state on this machine."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

STATE_DIR_VARIABLE = "MATEO_BULK_STATE_DIR"


def account_fingerprint(token: str) -> str:
    """A stable name for the account behind `token`; the token cannot be recovered from it."""
    return hashlib.sha256(b"mateo-bulk account\0" + token.encode()).hexdigest()[:16]


def state_dir() -> Path:
    """Where per-account state lives: $MATEO_BULK_STATE_DIR, else $XDG_STATE_HOME/mateo-bulk."""
    configured = os.environ.get(STATE_DIR_VARIABLE)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "mateo-bulk"
