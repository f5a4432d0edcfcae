"""What a run may take from the process it runs in: nothing, unless its caller asks (the CLI
asks for all of it, see pipeline/cli/session.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, TypedDict

#: (token, base URL) -> the answers `mateo-bulk doctor` stored for that account, or None.
AnswersLookup = Callable[[str, str], Mapping[str, Any] | None]


class SessionHooks(TypedDict, total=False):
    """Keywords of `run`, `resume`, `plan`, `apply_plan` and `run_job`."""

    #: True: SIGINT/SIGTERM stop the run (the first cleanly, a second at once); the handlers
    #: found are given back when it ends.
    handle_signals: bool
    #: `pipeline.api.account.load_answers`: start at the batch size `mateo-bulk doctor` found
    #: the account's API accepts.
    stored_answers: AnswersLookup | None


class ProcessHooks(SessionHooks, total=False):
    """A new run's keywords: also where an input of "-" reads from."""

    #: What an input of "-" reads, e.g. sys.stdin.buffer (kept in the run directory as
    #: stdin.csv); without it, "-" is refused before anything is created or sent.
    stdin: BinaryIO | None


def check_hooks(given: Mapping[str, object], hooks: type[SessionHooks], function: str) -> None:
    """TypeError for a keyword `hooks` does not have, as Python raises for any unknown keyword:
    a misspelt `handle_signal=True` must not quietly leave Ctrl-C unhandled."""
    known = hooks.__annotations__  # every key, inherited ones too
    for name in given:
        if name not in known:
            raise TypeError(f"{function}() got an unexpected keyword argument {name!r}")
