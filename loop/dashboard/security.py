"""Who may change a run through the dashboard, and the headers that keep the pages inert.

Reading needs nothing. Every change (a review, a control) is a POST that needs the operator token the dashboard
was started with: as `Authorization: Bearer TOKEN` (the API), or through the login form, which sets a session
cookie bound to the operator's name. Forms carry a CSRF token derived from the session, so another site cannot
post with the cookie. Without a configured token the dashboard is read-only. Cookies and CSRF tokens are HMACs
keyed by the operator token: nothing is stored on the server, and a new token ends every session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from fastapi import Request

SESSION_COOKIE = "cai_session"
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                           "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
MAX_NAME = 64


@dataclass(frozen=True)
class Operator:
    name: str
    via: str
    """bearer | session: a bearer request needs no CSRF token (browsers never add the header by themselves)."""


class Access:
    def __init__(self, token: str | None):
        self.token = token or None

    @property
    def read_only(self) -> bool:
        return self.token is None

    def _mac(self, purpose: str, value: str) -> str:
        assert self.token is not None
        return hmac.new(self.token.encode(), f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def token_matches(self, candidate: str) -> bool:
        return self.token is not None and hmac.compare_digest(candidate.encode(), self.token.encode())

    def session_cookie(self, name: str) -> str:
        encoded = base64.urlsafe_b64encode(name.encode()).decode()
        return f"{encoded}.{self._mac('session', name)}"

    def csrf_token(self, operator: Operator | None) -> str:
        return self._mac("csrf", operator.name) if operator and self.token else ""

    def operator(self, request: Request) -> Operator | None:
        """The authenticated operator of a request, or None."""
        if self.token is None:
            return None
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            if not self.token_matches(header[7:].strip()):
                return None
            name = request.headers.get("x-cai-operator", "").strip()[:MAX_NAME] or "api"
            return Operator(name, "bearer")
        cookie = request.cookies.get(SESSION_COOKIE, "")
        encoded, _, mac = cookie.partition(".")
        try:
            name = base64.urlsafe_b64decode(encoded.encode()).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        if name and hmac.compare_digest(mac.encode(), self._mac("session", name).encode()):
            return Operator(name, "session")
        return None

    def csrf_ok(self, operator: Operator, submitted: str) -> bool:
        return operator.via == "bearer" or hmac.compare_digest(submitted.encode(),
                                                               self.csrf_token(operator).encode())
