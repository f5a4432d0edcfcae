"""Every switch of the sandbox, in one frozen record.

The defaults are plain PostgREST (>= 12) behind a proxy that only adds Mateo's documented error
body: no limits, no faults, nothing dropped. Each unknown about Mateo's real proxy (see
`docs/api.md`, "What is not known") is one switch, so the client can be tested against every
answer the real API might give. The help text of each field is the CLI's help text too, so the
flag reference cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

OBJECT_RESPONSES = ("off", "one", "first")
ERROR_BODIES = ("mateo", "postgrest")
RATELIMIT_WINDOWS = ("rate", "day")
CUTOFF_BODIES = ("json", "html")
LATENCY_DISTRIBUTIONS = ("fixed", "uniform", "exponential")
OBJECT_FAULT_SHAPES = ("row", "wrapper")
BAD_RETRY_AFTER_KINDS = ("malformed", "enormous", "absurd", "alternate")


def _switch(
    default: Any,
    help: str,
    *,
    group: str,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    kind: type | None = None,
    metavar: str | None = None,
    flag_help: str | None = None,
    default_text: str | None = None,
) -> Any:
    metadata = {
        "help": help,
        "flag_help": flag_help,
        "default_text": default_text,
        "group": group,
        "flag": flag,
        "choices": choices,
        "kind": kind or type(default),
        "metavar": metavar,
    }
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """How the sandbox answers; replace it at runtime with `Sandbox.configure(**changes)`."""

    token: str = _switch(
        "sandbox-token",
        "the API key clients must send as 'Authorization: Bearer <token>'",
        group="server",
        flag="--token",
    )

    # --- The proxy's unknowns ---------------------------------------------------------------
    object_response: str = _switch(
        "off",
        "shape of a PATCH body: off = JSON array (PostgREST); one = a one-row result as a bare "
        "object, other results as arrays; first = always one object, the first updated row "
        "(null when none), as a proxy answering rows[0] would",
        group="unknowns",
        choices=OBJECT_RESPONSES,
    )
    select_returns_body: bool = _switch(
        False,
        "a PATCH with ?select= but no 'Prefer: return=representation' still returns the body",
        group="unknowns",
    )
    zero_match_404: bool = _switch(
        False,
        "a PATCH that matched no row answers 404 (PostgREST before 10.1) instead of 204 / []",
        group="unknowns",
    )
    force_single_object: bool = _switch(
        False,
        "the proxy asks for a single object on every request: 406 PGRST116 and nothing "
        "changed when a PATCH or GET matches 0 or more than 1 row",
        group="unknowns",
    )
    drop_content_range: bool = _switch(
        False, "the proxy does not forward the Content-Range header", group="unknowns"
    )
    drop_prefer: bool = _switch(
        False,
        "the proxy does not forward Prefer headers (return=, count=, handling=, max-affected=)",
        group="unknowns",
    )
    default_status_open: bool = _switch(
        False,
        "the proxy fills in the schema default status=open when a PATCH body omits status",
        group="unknowns",
    )
    error_body: str = _switch(
        "mateo",
        "error body keys: mateo = code, message, details, hint, status; postgrest = code, "
        "message, details, hint",
        group="unknowns",
        choices=ERROR_BODIES,
    )
    max_url_length: int | None = _switch(
        None,
        "longest request target (path and query, in bytes) accepted; longer ones get nginx's "
        "414 HTML page",
        group="unknowns",
        kind=int,
        metavar="BYTES",
    )
    max_rows: int = _switch(50, "most rows a GET returns", group="unknowns", metavar="N")

    # --- Limits -------------------------------------------------------------------------------
    rate: float | None = _switch(
        None,
        "token-bucket request rate in requests per second (Mateo: 2)",
        group="limits",
        kind=float,
        metavar="RPS",
    )
    burst: int | None = _switch(
        None,
        "token-bucket size: requests allowed at once",
        group="limits",
        default_text="the rate rounded up, at least 1",
        kind=int,
        metavar="N",
    )
    daily_quota: int | None = _switch(
        None,
        "requests allowed per day, refused ones included (Mateo: 10000)",
        group="limits",
        kind=int,
        metavar="N",
    )
    ratelimit_limit_header: bool = _switch(
        True,
        "send the ratelimit-limit header",
        group="limits",
        flag_help="do not send the ratelimit-limit header",
    )
    ratelimit_remaining_header: bool = _switch(
        True,
        "send the ratelimit-remaining header",
        group="limits",
        flag_help="do not send the ratelimit-remaining header",
    )
    ratelimit_reset_header: bool = _switch(
        True,
        "send the ratelimit-reset header (seconds)",
        group="limits",
        flag_help="do not send the ratelimit-reset header",
    )
    retry_after_header: bool = _switch(
        True,
        "send Retry-After (whole seconds) on a 429",
        group="limits",
        flag_help="do not send Retry-After on a 429",
    )
    ratelimit_window: str = _switch(
        "rate",
        "which limit the ratelimit-* headers describe when both are set: the token bucket "
        "(rate) or the daily quota (day)",
        group="limits",
        choices=RATELIMIT_WINDOWS,
    )

    # --- The request cut-off ------------------------------------------------------------------
    cutoff_seconds: float | None = _switch(
        None,
        "answer requests slower than this many seconds with an error (Mateo documents 2; "
        "only added latency makes a request slow)",
        group="cutoff",
        flag="--cutoff",
        kind=float,
        metavar="SECONDS",
    )
    cutoff_status: int = _switch(
        504, "HTTP status of a cut-off answer", group="cutoff", metavar="STATUS"
    )
    cutoff_body: str = _switch(
        "json",
        "body of a cut-off answer: json (error body) or html (a gateway page)",
        group="cutoff",
        choices=CUTOFF_BODIES,
    )
    cutoff_commits: bool = _switch(
        True,
        "a cut-off PATCH is still committed (the gateway gave up, the database did not)",
        group="cutoff",
        flag="--cutoff-rollback",
        flag_help="a cut-off PATCH changes nothing (default: it is committed, as when a gateway "
        "gives up while the database carries on)",
    )

    # --- Faults -------------------------------------------------------------------------------
    fault_seed: int = _switch(
        0, "seed of the random draws for faults and latency", group="faults", metavar="N"
    )
    fault_500: float = _switch(
        0.0, "probability of a 500 with a JSON error body", group="faults", metavar="P"
    )
    fault_502: float = _switch(
        0.0, "probability of a 502 with an HTML body", group="faults", metavar="P"
    )
    fault_503: float = _switch(
        0.0, "probability of a 503 with Retry-After", group="faults", metavar="P"
    )
    fault_503_retry_after: int = _switch(
        1, "Retry-After seconds sent with a 503 fault", group="faults", metavar="SECONDS"
    )
    fault_drop: float = _switch(
        0.0,
        "probability that the connection is closed mid-response (a PATCH is committed first)",
        group="faults",
        metavar="P",
    )
    fault_applied_503: float = _switch(
        0.0,
        "probability that a PATCH is committed and then answered 503",
        group="faults",
        metavar="P",
    )
    latency_ms: float = _switch(
        0.0, "mean latency added to every /api answer", group="faults", metavar="MS"
    )
    latency_distribution: str = _switch(
        "fixed",
        "distribution of the added latency: fixed, uniform (0 to twice the mean), exponential",
        group="faults",
        choices=LATENCY_DISTRIBUTIONS,
    )
    fault_slow: float = _switch(
        0.0,
        "probability of a very slow answer (to trigger client timeouts)",
        group="faults",
        metavar="P",
    )
    slow_seconds: float = _switch(
        30.0, "extra delay of a very slow answer", group="faults", metavar="SECONDS"
    )

    # --- Hostile answers: what a broken or malicious server might send ------------------------
    fault_not_json: float = _switch(
        0.0,
        "probability of a 200 whose body is not JSON (nothing committed)",
        group="faults",
        metavar="P",
    )
    fault_object: float = _switch(
        0.0,
        "probability of a 200 with one JSON object instead of the array, for any number of rows "
        "and whatever was asked for (nothing committed; see --fault-object-shape)",
        group="faults",
        metavar="P",
    )
    fault_object_shape: str = _switch(
        "row",
        "the object of --fault-object: row = the first matched row as it stands, unchanged ({} "
        'when none matched); wrapper = {"data": [the matched rows], "count": N}',
        group="faults",
        choices=OBJECT_FAULT_SHAPES,
    )
    fault_foreign_rows: float = _switch(
        0.0,
        "probability that a 200 array also names a real row that was not asked for (the asked "
        "rows are committed as usual)",
        group="faults",
        metavar="P",
    )
    fault_huge_body: float = _switch(
        0.0,
        "probability of a 200 with a 10 MB body: the matched rows, unchanged, padded with "
        "whitespace (nothing committed)",
        group="faults",
        metavar="P",
    )
    fault_endless: float = _switch(
        0.0,
        "probability of a 200 whose body never ends: one byte every 100 ms until the client "
        "hangs up (nothing committed)",
        group="faults",
        metavar="P",
    )
    fault_redirect: float = _switch(
        0.0,
        "probability of a 307 redirect to another origin (nothing committed)",
        group="faults",
        metavar="P",
    )
    fault_redirect_to: str = _switch(
        "",
        "origin a --fault-redirect answer points to; the request's path and query follow /steal",
        group="faults",
        metavar="URL",
        default_text="http://127.0.0.2:<the sandbox's port>",
    )
    fault_bad_retry_after: float = _switch(
        0.0,
        "probability of a 429 whose Retry-After and ratelimit-reset are malformed or enormous "
        "(nothing committed)",
        group="faults",
        metavar="P",
    )
    bad_retry_after: str = _switch(
        "alternate",
        "the Retry-After of --fault-bad-retry-after: malformed (neither seconds nor a date), "
        "enormous (a year), absurd (999999999999 seconds, past the year 9999), or alternate "
        "(the three in turn)",
        group="faults",
        choices=BAD_RETRY_AFTER_KINDS,
    )

    def __post_init__(self) -> None:
        _check_choice("object_response", self.object_response, OBJECT_RESPONSES)
        _check_choice("error_body", self.error_body, ERROR_BODIES)
        _check_choice("ratelimit_window", self.ratelimit_window, RATELIMIT_WINDOWS)
        _check_choice("cutoff_body", self.cutoff_body, CUTOFF_BODIES)
        _check_choice("latency_distribution", self.latency_distribution, LATENCY_DISTRIBUTIONS)
        _check_choice("fault_object_shape", self.fault_object_shape, OBJECT_FAULT_SHAPES)
        _check_choice("bad_retry_after", self.bad_retry_after, BAD_RETRY_AFTER_KINDS)
        if not self.token:
            raise ValueError("token must not be empty")
        for name in (*EXCLUSIVE_FAULTS, "fault_slow"):
            value = getattr(self, name)
            if not (0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a probability between 0 and 1, not {value}")
        if sum(getattr(self, name) for name in EXCLUSIVE_FAULTS) > 1.0 + 1e-9:
            raise ValueError(f"{' + '.join(EXCLUSIVE_FAULTS)} must not exceed 1")
        if self.fault_redirect_to and not self.fault_redirect_to.startswith(
            ("http://", "https://")
        ):
            raise ValueError(
                f"fault_redirect_to must be an http:// or https:// origin, not "
                f"{self.fault_redirect_to!r}"
            )
        _check_positive("rate", self.rate)
        _check_positive("burst", self.burst)
        _check_at_least("daily_quota", self.daily_quota, 0)
        _check_positive("max_url_length", self.max_url_length)
        _check_positive("max_rows", self.max_rows)
        _check_positive("cutoff_seconds", self.cutoff_seconds)
        _check_at_least("latency_ms", self.latency_ms, 0)
        _check_at_least("slow_seconds", self.slow_seconds, 0)
        _check_at_least("fault_503_retry_after", self.fault_503_retry_after, 0)
        if not (400 <= self.cutoff_status <= 599):
            raise ValueError(
                f"cutoff_status must be an HTTP error status, not {self.cutoff_status}"
            )

    @property
    def effective_burst(self) -> int:
        """The token-bucket size actually used."""
        if self.burst is not None:
            return self.burst
        return max(1, math.ceil(self.rate or 1))

    def replace(self, **changes: Any) -> SandboxConfig:
        """A copy with some switches changed; an unknown name or a bad value raises ValueError."""
        unknown = sorted(set(changes) - set(switch_names()))
        if unknown:
            raise ValueError(f"unknown sandbox switch: {', '.join(unknown)}")
        return dataclasses.replace(self, **_coerce(changes))

    def to_dict(self) -> dict[str, Any]:
        """The switches as JSON-ready values, the token left out."""
        values = dataclasses.asdict(self)
        values.pop("token")
        return values


#: At most one of these faults is drawn per request, from a single roll; the hostile answers
#: come last so that a seed drawn before they existed still fails the same way.
EXCLUSIVE_FAULTS = (
    "fault_500",
    "fault_502",
    "fault_503",
    "fault_drop",
    "fault_applied_503",
    "fault_not_json",
    "fault_object",
    "fault_foreign_rows",
    "fault_huge_body",
    "fault_endless",
    "fault_redirect",
    "fault_bad_retry_after",
)


def switch_names() -> tuple[str, ...]:
    return tuple(spec.name for spec in dataclasses.fields(SandboxConfig))


def switch_fields() -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(SandboxConfig)


def _coerce(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Accept JSON numbers for float switches and reject values of the wrong type."""
    kinds = {spec.name: spec.metadata["kind"] for spec in dataclasses.fields(SandboxConfig)}
    defaults = {spec.name: spec.default for spec in dataclasses.fields(SandboxConfig)}
    coerced: dict[str, Any] = {}
    for name, value in changes.items():
        kind = kinds[name]
        if value is None and defaults[name] is None:
            coerced[name] = None
        elif kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, not {value!r}")
            coerced[name] = value
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, not {value!r}")
            coerced[name] = float(value)
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be a whole number, not {value!r}")
            coerced[name] = value
        else:
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string, not {value!r}")
            coerced[name] = value
    return coerced


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be greater than 0, not {value}")


def _check_at_least(name: str, value: float | None, minimum: float) -> None:
    if value is not None and not value >= minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
