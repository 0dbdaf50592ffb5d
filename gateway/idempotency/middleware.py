"""``Idempotency-Key`` on every POST of the management API: the same key and request within 24 h
answers the first response again instead of acting twice (Stripe's contract).

Keys are scoped to the credential that sent them, checked first: a request without a valid one
(a revoked key included) goes on to its route's 401, and nothing is kept or replayed. The same
key with another method, path or body is a 422; a key whose first request is still running is a 409. Answers of 5xx are not kept, so
a retry after a server error acts again; nor are refusals before the route's handler began (a body
or parameter that failed validation, an unknown parameter), so the corrected request can use the
key (Stripe's rule: a result is saved only once an endpoint started executing). The key row is claimed before the handler runs, so two
concurrent requests with one key cannot both act; a claim whose process died unanswered is
released after two minutes (if that request had committed, a retry then acts a second time). Kept answers are encrypted at rest: some
carry secrets shown once (a new API key, a generated signing secret).
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import msgspec
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.database import STORAGE_ERRORS, utcnow
from gateway.idempotency.models import IdempotentRequest
from gateway.problems import PROBLEM_JSON, REFUSED_UNSTARTED, problem_body, render_problem
from tenants.auth import active_key, bearer_token
from tenants.crypto import SecretBox, same

KEY_HEADER = b"idempotency-key"
REPLAYED_HEADER = "idempotent-replayed"
_TTL = timedelta(hours=24)
# A first request still unanswered after this long died with its process: its key is released.
_ABANDONED = timedelta(minutes=2)
_MAX_KEY = 255


class IdempotencyMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        sessions: async_sessionmaker[AsyncSession],
        box: SecretBox,
        max_body: int,
        operator_key: str,
        prefix: str = "/api/",
    ) -> None:
        self._app = app
        self._operator_key = operator_key
        self._sessions = sessions
        self._box = box
        self._max_body = max_body
        self._prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _key(scope) if scope["type"] == "http" and scope["method"] == "POST" else None
        if key is None or not scope["path"].startswith(self._prefix):
            await self._app(scope, receive, send)
            return
        if not key or len(key) > _MAX_KEY:
            await _problem(send, scope, 400, "invalid-idempotency-key", f"Idempotency-Key must be 1 to {_MAX_KEY} characters")
            return
        try:
            body = await _read_body(receive, self._max_body)
        except _TooLarge:
            await _problem(send, scope, 413, "request-entity-too-large", f"the body is larger than the limit of {self._max_body} bytes")
            return
        if body is None:  # the client went away mid-upload: nothing to act on, nobody to answer
            return
        fingerprint = hashlib.sha256(b"\n".join([scope["method"].encode(), scope["path"].encode(), body])).hexdigest()
        try:
            principal = await self._principal(scope)
            stored = await self._claim((principal, key), fingerprint) if principal is not None else None
        except STORAGE_ERRORS as exc:  # answered here, as the app would: raised, it passed the metrics middleware as a 200
            status, problem, headers = render_problem(exc, scope["path"], self._max_body)
            await _answer(send, status, PROBLEM_JSON, msgspec.json.encode(problem), headers=headers)
            return
        if principal is None:
            await self._app(scope, _replay(body), send)
            return
        row_key = (principal, key)
        if stored is None:
            await self._act(scope, body, send, row_key)
        elif stored.fingerprint != fingerprint:
            await _problem(send, scope, 422, "idempotency-key-reused", "this Idempotency-Key was used with another request")
        elif stored.status_code is None:
            await _problem(send, scope, 409, "idempotency-key-in-progress", "the first request with this Idempotency-Key is still running")
        else:
            body = self._box.decrypt(stored.body).encode() if stored.body else b""
            await _answer(send, stored.status_code, stored.content_type, body, replayed=True)

    async def _principal(self, scope: Scope) -> str | None:
        """``operator``, or ``key:<id>`` of the live API key the request carries; None for anything else."""
        token = bearer_token(dict(scope["headers"]).get(b"authorization", b"").decode("latin-1"))
        if token is None:
            return None
        if self._operator_key and same(token, self._operator_key):
            return "operator"
        async with self._sessions() as session:
            row = await active_key(session, token)
        return None if row is None else f"key:{row.id}"

    async def _claim(self, row_key: tuple[str, str], fingerprint: str) -> IdempotentRequest | None:
        """None when this request now owns the key; else the row of the request that does (or did)."""
        now = utcnow()
        expired = or_(
            IdempotentRequest.created_at < now - _TTL,
            and_(IdempotentRequest.status_code.is_(None), IdempotentRequest.created_at < now - _ABANDONED),
        )
        async with self._sessions() as session, session.begin():
            await session.execute(delete(IdempotentRequest).where(expired))
        try:
            async with self._sessions() as session, session.begin():
                session.add(IdempotentRequest(scope=row_key[0], key=row_key[1], fingerprint=fingerprint))
            return None
        except IntegrityError:
            async with self._sessions() as session:
                return await session.scalar(
                    select(IdempotentRequest).where(IdempotentRequest.scope == row_key[0], IdempotentRequest.key == row_key[1])
                )

    async def _act(self, scope: Scope, body: bytes, send: Send, row_key: tuple[str, str]) -> None:
        captured: dict[str, Any] = {"body": b""}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["content_type"] = dict(message.get("headers", [])).get(b"content-type", b"").decode("latin-1")
            elif message["type"] == "http.response.body":
                captured["body"] += message.get("body", b"")
            await send(message)

        try:
            await self._app(scope, _replay(body), capture)
        finally:
            await self._settle(row_key, captured, acted=not scope.get(REFUSED_UNSTARTED))

    async def _settle(self, row_key: tuple[str, str], captured: dict[str, Any], *, acted: bool) -> None:
        """Keep a final answer; release the key after a server error (or none), or a refusal before
        the handler acted, so a retry acts."""
        where = (IdempotentRequest.scope == row_key[0], IdempotentRequest.key == row_key[1])
        async with self._sessions() as session, session.begin():
            status = captured.get("status")
            if status is None or status >= 500 or not acted:
                await session.execute(delete(IdempotentRequest).where(*where))
            else:
                await session.execute(
                    update(IdempotentRequest)
                    .where(*where)
                    .values(
                        status_code=status,
                        content_type=captured["content_type"] or None,
                        body=self._box.encrypt(captured["body"].decode()),
                    )
                )


def _key(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == KEY_HEADER:
            return value.decode("latin-1").strip()
    return None


def _replay(body: bytes) -> Receive:
    """A ``receive`` that hands the route the body this middleware already read."""

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class _TooLarge(Exception):
    """More body than the limit allows."""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body; None if the client left before sending it all (a truncated body must
    not be acted on, nor its answer kept for the key); ``_TooLarge`` once it exceeds ``limit``."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(
    send: Send, status: int, content_type: str | None, body: bytes, *, replayed: bool = False, headers: dict[str, str] | None = None
) -> None:
    raw = [(b"content-length", str(len(body)).encode())]
    if content_type:
        raw.append((b"content-type", content_type.encode("latin-1")))
    if replayed:
        raw.append((REPLAYED_HEADER.encode(), b"true"))
    raw.extend((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _problem(send: Send, scope: Scope, status: int, kind: str, detail: str) -> None:
    await _answer(send, status, PROBLEM_JSON, msgspec.json.encode(problem_body(status, kind, detail, scope["path"])))
