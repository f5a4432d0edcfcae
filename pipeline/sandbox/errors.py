"""The error answers of the simulated API, in PostgREST's and Mateo's shapes."""

from __future__ import annotations

import json
from http import HTTPStatus


class ApiError(Exception):
    """An error answer: HTTP status plus the PostgREST-style code, message, details and hint."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: str | None = None,
        hint: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.hint = hint
        self.headers = headers or []

    def body(self, style: str) -> bytes:
        """The JSON body: Mateo documents `status`, PostgREST sends `details`."""
        payload: dict[str, object] = {
            "code": self.code,
            "message": self.message,
            "details": self.details,
            "hint": self.hint,
        }
        if style == "mateo":
            payload["status"] = self.status
        return json.dumps(payload, separators=(",", ":")).encode()


def gateway_page(status: int) -> bytes:
    """The HTML page nginx answers with for a gateway error or a too-long URL."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    if status == 414:
        reason = "Request-URI Too Large"
    elif status == 504:
        reason = "Gateway Time-out"
    return (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode()
