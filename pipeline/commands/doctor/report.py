"""What one doctor run found: the report, as text and as JSON, and the answers stored for runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.api.account import store_answers
from pipeline.commands.doctor.observation import Observation
from pipeline.commands.doctor.verdict import LEGEND, Verdict

#: 2: verdicts carry documented/copes/action_needed instead of one `ok`; `answers` is unchanged,
#: so a file of format 1 is still read.
_FORMAT = 2
#: Exit codes: every answer handled as is; a finding needs the user's action; stopped early.
EXIT_OK = 0
EXIT_ACTION_NEEDED = 1
EXIT_STOPPED = 3
NOTHING_TO_DO = "nothing: mateo-bulk handles every answer seen"


@dataclass(frozen=True, slots=True)
class DoctorReport:
    """Everything one `doctor` run found out; `answers` is what later runs read."""

    base_url: str
    checked_at: str
    token_valid: bool
    verdicts: tuple[Verdict, ...]
    #: Machine-readable answers (see `_answers`), stored per account for the runner.
    answers: Mapping[str, Any]
    #: Requests sent, retries included.
    requests: int
    observations: tuple[Observation, ...] = ()
    #: Why doctor stopped before asking everything (bad token, rate limit, server down).
    stopped: str | None = None
    answers_file: str | None = field(default=None)

    @property
    def exit_code(self) -> int:
        """3 when doctor stopped early, 1 when a finding needs action, else 0."""
        if self.stopped:
            return EXIT_STOPPED
        if any(verdict.action_needed for verdict in self.verdicts):
            return EXIT_ACTION_NEEDED
        return EXIT_OK

    @property
    def to_do(self) -> list[str]:
        """What the user should do, once each, in the order of the questions."""
        items: list[str] = []
        token = next((verdict for verdict in self.verdicts if verdict.key == "token"), None)
        if self.stopped and not (token and token.to_do):
            # The token verdict says why when doctor stopped there; otherwise the reason leads.
            items.append(f"doctor stopped early: {self.stopped}")
        for verdict in self.verdicts:
            if verdict.to_do and verdict.to_do not in items:
                items.append(verdict.to_do)
        return items

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document (the `--json` output)."""
        return {
            "base_url": self.base_url,
            "checked_at": self.checked_at,
            "token_valid": self.token_valid,
            "requests": self.requests,
            "stopped": self.stopped,
            "exit_code": self.exit_code,
            "legend": dict(LEGEND),
            "verdicts": [verdict.to_dict() for verdict in self.verdicts],
            "to_do": self.to_do,
            "answers": dict(self.answers),
            "observations": [
                {**asdict(observation), "headers": dict(observation.headers)}
                for observation in self.observations
            ],
            "answers_file": self.answers_file,
        }


def save_answers(report: DoctorReport, token: str) -> Path:
    """Write the report's answers for later runs of this account; the token is never written."""
    document = {
        "format": _FORMAT,
        "base_url": report.base_url,
        "checked_at": report.checked_at,
        "requests": report.requests,
        "answers": dict(report.answers),
        "verdicts": [verdict.to_dict() for verdict in report.verdicts],
    }
    return store_answers(token, document)


def report_text(report: DoctorReport) -> str:
    """The legend, one short block per question, and what to do, as plain text."""
    lines = [f"mateo-bulk doctor: {report.base_url} at {report.checked_at}", ""]
    for number, (mark, meaning) in enumerate(LEGEND):
        lines.append(f"{'legend:' if number == 0 else '':<8}[{mark}] {meaning}")
    lines.append("")
    docs = {True: "as documented", False: "not as documented", None: "could not tell"}
    copes = {True: "copes", False: "does NOT cope", None: "not known"}
    for verdict in report.verdicts:
        lines.append(f"[{verdict.mark}] {verdict.question}")
        lines.append(f"     observed:   {verdict.observed}")
        lines.append(f"     docs:       {docs[verdict.documented]} ({verdict.docs})")
        lines.append(f"     mateo-bulk: {copes[verdict.copes]}: {verdict.action}")
        if verdict.to_do:
            lines.append(f"     to do:      {verdict.to_do}")
    lines.append("")
    lines.append(
        f"{report.requests} requests sent; only random ids no conversation has, so nothing "
        "was changed."
    )
    if report.answers_file:
        lines.append(f"answers saved to {report.answers_file}")
    lines.append("")
    to_do = report.to_do
    if not to_do:
        lines.append(f"What to do: {NOTHING_TO_DO}.")
    else:
        lines.append(f"What to do (exit code {report.exit_code}):")
        lines.extend(f"  {number}. {item}" for number, item in enumerate(to_do, 1))
    return "\n".join(lines)
