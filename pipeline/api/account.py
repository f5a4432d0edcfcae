"""Who a token belongs to, without keeping the token: per-account state on this machine.

That state is the quota ledger (pipeline.api.quota) and the answers `mateo-bulk doctor` found
this account's API gives (kept here so that a run can start from them without the doctor).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

STATE_DIR_VARIABLE = "MATEO_BULK_STATE_DIR"
ANSWERS_FILE = "doctor.json"
#: The formats of the doctor's document this version reads: format 1's `answers` mean the same
#: as format 2's; only its verdicts differ.
ANSWERS_FORMATS_READ = (1, 2)


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


def answers_path(token: str) -> Path:
    """Where the doctor's answers for the account behind `token` are kept."""
    return state_dir() / "accounts" / account_fingerprint(token) / ANSWERS_FILE


def store_answers(token: str, document: dict[str, Any]) -> Path:
    """Replace the account's stored answers with `document` at once (never half written)."""
    path = answers_path(token)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def load_answers(token: str, base_url: str) -> dict[str, Any] | None:
    """The stored doctor document for this account and base URL, or None if there is none.

    Answers found for another base URL (the sandbox, a staging proxy) are not this API's.
    """
    try:
        document = json.loads(answers_path(token).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("format") not in ANSWERS_FORMATS_READ:
        return None
    if str(document.get("base_url", "")).rstrip("/") != base_url.rstrip("/"):
        return None
    return document
