"""Every error mateo-bulk raises, in one tree, each mapped to the process exit code.

Per-row outcomes (not found, rejected, failed) are data in the report, not exceptions; these are
the errors that stop a command or that the retry policy sorts into "try again" and "give up".
"""

from __future__ import annotations


class MateoBulkError(Exception):
    """Base of every error mateo-bulk raises on purpose."""

    exit_code = 1


class InputError(MateoBulkError):
    """A bad file, column, flag or value: the run refuses to start and nothing is sent."""

    exit_code = 2


class RunStopped(MateoBulkError):
    """The run stopped before every row was attempted; it can be resumed."""

    exit_code = 3


class AuthError(RunStopped):
    """The API refused the token (401 or 403)."""

    def __init__(self, message: str, *, http_status: int) -> None:
        super().__init__(message)
        self.http_status = http_status


class ConnectionSetupError(RunStopped):
    """A secure connection to the API could not be set up (TLS): no request can succeed."""


class EndpointError(RunStopped):
    """The base URL does not lead to the conversation endpoint (404 with a page, PGRST205), or
    no connection to it can be made: no row can succeed, so the run stops instead of failing
    every row."""


class Interrupted(RunStopped):
    """The user or the system asked the run to stop (SIGINT, SIGTERM)."""


class SafetyError(MateoBulkError):
    """The server answered for rows we did not ask for, or a request was about to leave without
    its id filter: stop everything and investigate."""

    exit_code = 4

    def __init__(self, message: str, *, unexpected_ids: frozenset[str] = frozenset()) -> None:
        super().__init__(message)
        self.unexpected_ids = unexpected_ids


class RemoteError(MateoBulkError):
    """An answer from the API that is not a success, with what the server said about it."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.retry_after = retry_after


class TransientError(RemoteError):
    """Worth another attempt: 429, 5xx, a timeout or a dropped connection."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        may_have_applied: bool = False,
        reached_api: bool = True,
    ) -> None:
        super().__init__(message, http_status=http_status, code=code, retry_after=retry_after)
        #: The request reached the server and its answer was lost or broken: a PATCH may have
        #: changed its rows all the same (a 5xx after a commit, a dropped connection, a timeout).
        self.may_have_applied = may_have_applied
        #: False when no connection was made (refused, DNS): nothing reached the API.
        self.reached_api = reached_api


class PermanentError(RemoteError):
    """The server refused the request itself (4xx): another attempt gets the same answer."""
