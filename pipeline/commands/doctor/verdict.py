"""Doctor's verdicts: what each question found, their marks and legend, phrases and judgements
judges share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.commands.doctor.observation import Observation

LEGEND = (
    ("ok", "as documented, and mateo-bulk handles it"),
    ("~~", "not as documented (or not seen to be); mateo-bulk handles it, perhaps at a cost"),
    ("!!", 'needs your action: see "What to do" at the end'),
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One question, what was observed, whether the docs promise it, and what mateo-bulk does."""

    key: str
    question: str
    observed: str
    #: What Mateo's docs or plain PostgREST promise for this question.
    docs: str
    #: The answer is what `docs` promises; None when the answers seen cannot tell.
    documented: bool | None
    #: mateo-bulk works correctly under this answer (perhaps at a cost); None when not asked.
    copes: bool | None
    #: What mateo-bulk does with the answer.
    action: str
    #: The user should do something about it: `to_do` says what.
    action_needed: bool = False
    to_do: str | None = None

    def __post_init__(self) -> None:
        if self.action_needed != bool(self.to_do):
            raise ValueError(f"{self.key}: action_needed and to_do disagree")
        if self.copes is False and not self.action_needed:
            raise ValueError(f"{self.key}: an answer mateo-bulk cannot cope with needs action")

    @property
    def mark(self) -> str:
        """The mark printed before the question: ok, ~~ or !! (see `LEGEND`)."""
        if self.action_needed:
            return "!!"
        return "ok" if self.documented is True and self.copes is True else "~~"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mark": self.mark}


#: What the judges look at: each observation by the purpose of its request.
Found = Mapping[str, Observation]


@dataclass(frozen=True, slots=True)
class Judgement:
    """What one judge makes of the answers; `diagnosis` puts it under its question."""

    observed: str
    #: The answer is what the question's docs promise (None: the answers cannot tell).
    documented: bool | None
    action: str
    copes: bool | None = True
    #: Set when the user should act: a refused token, an unknown answer, one row per request.
    to_do: str | None = None


#: What a read decides for a row a PATCH's answer does not name (`outcomes.judge_unnamed`).
READ_DECIDES = (
    "the rows an answer does not name are read back and the read decides: not_found only when "
    "the row does not exist, conflict when it no longer matched its guard, unchanged when it "
    "already held its target (updated when an earlier attempt's answer was lost)"
)
SUCCESS_SHAPE_UNSEEN = (
    "Whether a one-row success comes as an array or one object cannot be seen without changing "
    "a row; both are handled"
)
#: What one row per request costs (a snapshot GET and a PATCH per row), for the user to plan.
ONE_ROW_PER_REQUEST = (
    "expect about two requests per row (a GET for the snapshot, then the PATCH): a day's "
    "10,000 requests change about 5,000 rows, so split larger changes over days "
    "(--max-requests, --wait)"
)
UNKNOWN_TO_DO = "show this answer to Mateo's support, and start no large run until it is explained"
WRONG_ENDPOINT_TO_DO = (
    "check --base-url (it should end in /api/v1) and that the proxy passes this request on to "
    "/conversation; every run stops at such an answer"
)
WRONG_ENDPOINT = (
    "a 404 with an HTML page or PGRST205 means no such endpoint (a wrong --base-url): a run "
    "stops at it (exit 3, resumable, nothing changed), never reports rows not_found"
)
#: What a PATCH answered in a way mateo-bulk does not know leaves its rows with.
UNKNOWN_PATCH = (
    "not an answer mateo-bulk knows: the rows of such a PATCH would end rejected or failed, "
    "not done"
)


def wrong_endpoint(observed: str) -> Judgement:
    """The judgement of an answer from no such endpoint: a wrong --base-url, which stops runs."""
    return Judgement(observed, False, WRONG_ENDPOINT, copes=False, to_do=WRONG_ENDPOINT_TO_DO)


def unknown_answer(observed: str, action: str) -> Judgement:
    """The judgement of an answer mateo-bulk does not know: `action` says what it would do."""
    return Judgement(observed, False, action, copes=False, to_do=UNKNOWN_TO_DO)
