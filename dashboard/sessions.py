"""Login sessions: a random token in a signed, http-only, same-site cookie; its hash in the database.

The signature (HMAC under ``HOOKGATE_SECRET_KEY``) turns forged cookies away before any query;
the row is what logout and expiry delete, so a copied cookie dies with the session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard.models import LoginSession, User
from gateway.database import utcnow
from tenants.crypto import new_token, sha256_hex

COOKIE = "hookgate_session"


@dataclass(frozen=True)
class Signer:
    key: bytes

    @classmethod
    def from_secret(cls, secret_key: str) -> Signer:
        first = secret_key.split(",")[0].strip()
        return cls(hashlib.sha256(b"hookgate-dashboard-session:" + first.encode()).digest())

    def sign(self, token: str) -> str:
        return f"{token}.{self._mac(token)}"

    def unsign(self, value: str) -> str | None:
        token, _, mac = value.rpartition(".")
        return token if token and hmac.compare_digest(mac.encode(), self._mac(token).encode()) else None

    def _mac(self, token: str) -> str:
        digest = hmac.new(self.key, token.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class Viewer:
    """Who is looking at the dashboard: the user, its tenant and its session's CSRF token."""

    user: User
    session: LoginSession

    @property
    def tenant_id(self) -> uuid.UUID:
        return self.session.tenant_id

    @property
    def csrf_token(self) -> str:
        return self.session.csrf_token


async def start(db: AsyncSession, user: User, signer: Signer, hours: float) -> str:
    """A new session for ``user`` (committed); returns the cookie value."""
    token = new_token(32)
    now = utcnow()
    await db.execute(delete(LoginSession).where(LoginSession.user_id == user.id, LoginSession.expires_at <= now))
    db.add(
        LoginSession(token_hash=sha256_hex(token), user_id=user.id, tenant_id=user.tenant_id, csrf_token=new_token(24),
                     created_at=now, expires_at=now + timedelta(hours=hours))
    )
    await db.commit()
    return signer.sign(token)


async def resume(db: AsyncSession, cookie: str | None, signer: Signer) -> Viewer | None:
    """The live session this cookie names, or None (unsigned, unknown, expired or logged out)."""
    token = signer.unsign(cookie) if cookie else None
    if token is None:
        return None
    row = await db.scalar(select(LoginSession).where(LoginSession.token_hash == sha256_hex(token)))
    if row is None or row.expires_at <= utcnow():
        return None
    user = await db.get(User, row.user_id)
    return Viewer(user, row) if user is not None else None


async def end(db: AsyncSession, viewer: Viewer) -> None:
    await db.execute(delete(LoginSession).where(LoginSession.id == viewer.session.id))
    await db.commit()
