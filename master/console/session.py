"""The console's session: a signed, HttpOnly, SameSite=Strict cookie given for the admin token.

The cookie holds a fingerprint of the admin token, so a new token ends every session. It is signed with a secret
kept in a file (``auth.console_secret_file``, default ``console-secret`` beside the SQLite database), made with
mode 0600 on first start, so sessions outlive a restart; masters behind one balancer share the file.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

import tornado.web

from master.auth import Tokens, expand
from master.config import MasterConfig

log = logging.getLogger("converter.master")

SESSION_COOKIE = "converter_session"
SESSION_MAX_AGE_DAYS = 1


def cookie_secret(config: MasterConfig, tokens: Tokens) -> str:
    """The key that signs session cookies. Without tokens there are no sessions, so nothing is written."""
    if tokens.anonymous:
        return secrets.token_hex(32)
    path = expand(config.auth.console_secret_file or config.database.path.parent / "console-secret")
    try:
        return _read_or_create(path)
    except OSError as exc:
        log.warning("console: cannot keep the cookie secret in %s (%s): sessions end when the master restarts",
                    path, exc.strerror or exc)
        return secrets.token_hex(32)


def _read_or_create(path: Path) -> str:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text(encoding="utf-8").strip()
        if len(secret) < 32:
            raise OSError(f"{path} holds fewer than 32 characters") from None
        return secret
    secret = secrets.token_hex(32)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(secret + "\n")
        file.flush()
        os.fsync(file.fileno())
    log.info("console: made a new cookie secret in %s", path)
    return secret


def _fingerprint(tokens: Tokens) -> str:
    return hmac.new((tokens.admin or "").encode(), b"converter console session", hashlib.sha256).hexdigest()


def is_admin_token(tokens: Tokens, presented: str) -> bool:
    return tokens.admin is not None and hmac.compare_digest(presented.encode(), tokens.admin.encode())


def start_session(handler: tornado.web.RequestHandler, tokens: Tokens) -> None:
    handler.set_signed_cookie(SESSION_COOKIE, _fingerprint(tokens), expires_days=None, httponly=True,
                              samesite="Strict", secure=handler.request.protocol == "https", path="/")


def end_session(handler: tornado.web.RequestHandler) -> None:
    handler.clear_cookie(SESSION_COOKIE, path="/")


def has_session(handler: tornado.web.RequestHandler, tokens: Tokens) -> bool:
    """A valid session cookie for the current admin token, signed within the last day."""
    if tokens.admin is None or SESSION_COOKIE not in handler.request.cookies:
        return False
    value = handler.get_signed_cookie(SESSION_COOKIE, max_age_days=SESSION_MAX_AGE_DAYS)
    return value is not None and hmac.compare_digest(value, _fingerprint(tokens).encode())


def from_browser(handler: tornado.web.RequestHandler) -> bool:
    """A request a browser made on its own (no bearer token): it carries our session cookie, or the fetch
    metadata every current browser sends. Such a request must carry the XSRF token to change anything."""
    if handler.request.headers.get("Authorization"):
        return False
    return SESSION_COOKIE in handler.request.cookies or "Sec-Fetch-Site" in handler.request.headers
