"""Creating users, checking passwords and invitations: shared by the CLI, `hookgate dev` and the pages."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard.models import Invite, LoginSession, User
from dashboard.passwords import hash_password, password_problem, verify
from gateway.database import create_engine, session_factory, utcnow
from tenants.crypto import new_token, sha256_hex
from tenants.models import Tenant

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


class AccountError(ValueError):
    """A form value is not acceptable; ``field`` names the input it belongs next to."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def normal_email(email: str) -> str:
    """Trimmed and lower-cased, or an error for the email field."""
    email = email.strip().lower()
    if len(email) > 320 or not _EMAIL.match(email):
        raise AccountError("email", "Enter an email address like name@example.com.")
    return email


def _checked_password(password: str) -> str:
    problem = password_problem(password)
    if problem:
        raise AccountError("password", problem)
    return password


async def create_user(session: AsyncSession, tenant_id: uuid.UUID, email: str, password: str) -> User:
    """A tenant's user (committed); an AccountError names the field at fault."""
    if await session.get(Tenant, tenant_id) is None:
        raise AccountError("tenant", f"There is no tenant {tenant_id}.")
    user = User(tenant_id=tenant_id, email=normal_email(email), password_hash=hash_password(_checked_password(password)))
    session.add(user)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise AccountError("email", "An account with this email already exists.") from None
    return user


async def create_operator_user(database_url: str, tenant_id: uuid.UUID, email: str, password: str) -> User:
    """``hookgate users create``: one user, on a database of its own for the command's lifetime."""
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            return await create_user(session, tenant_id, email, password)
    finally:
        await engine.dispose()


async def account(session: AsyncSession, email: str) -> User | None:
    """The account of this address, if there is one."""
    return await session.scalar(select(User).where(User.email == email.strip().lower()))


async def authenticate(session: AsyncSession, email: str, password: str) -> User | None:
    """The user these credentials belong to; unknown emails take as long as wrong passwords."""
    user = await account(session, email)
    if not verify(user.password_hash if user else None, password) or user is None:
        return None
    user.last_login_at = utcnow()
    return user


async def set_password(session: AsyncSession, user: User, password: str, *, keep: uuid.UUID | None = None) -> None:
    """A new password (committed); every session of the user ends but ``keep`` (the one that asked)."""
    user.password_hash = hash_password(_checked_password(password))
    await session.execute(delete(LoginSession).where(LoginSession.user_id == user.id, LoginSession.id != keep))
    await session.commit()


async def remove_user(session: AsyncSession, user: User) -> None:
    """The account and its sessions, gone (committed): the person is signed out everywhere at once."""
    await session.execute(delete(LoginSession).where(LoginSession.user_id == user.id))
    await _withdraw_pending(session, user.tenant_id, user.email)  # a spare link must not let them back in
    await session.delete(user)
    await session.commit()


async def _withdraw_pending(session: AsyncSession, tenant_id: uuid.UUID, email: str) -> None:
    """The tenant's unused invitations for this address (in the caller's transaction)."""
    await session.execute(delete(Invite).where(Invite.tenant_id == tenant_id, Invite.email == email, Invite.accepted_at.is_(None)))


async def _by_email(session: AsyncSession, email: str) -> User:
    user = await session.scalar(select(User).where(User.email == normal_email(email)))
    if user is None:
        raise AccountError("email", f"There is no account for {email.strip().lower()}.")
    return user


async def operator_account_change(database_url: str, email: str, password: str | None) -> User:
    """``hookgate users set-password`` (a password) and ``users delete`` (None): on a database of its
    own for the command's lifetime. Either way the account's sessions end."""
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            user = await _by_email(session, email)
            await (set_password(session, user, password) if password is not None else remove_user(session, user))
            return user
    finally:
        await engine.dispose()


async def invite(session: AsyncSession, tenant_id: uuid.UUID, email: str, by: uuid.UUID, hours: float) -> str:
    """A single-use invitation; the token (for the link) is returned once, only its hash is kept."""
    email = normal_email(email)
    if await session.scalar(select(User.id).where(User.email == email)) is not None:
        raise AccountError("email", "This person already has an account.")
    await _withdraw_pending(session, tenant_id, email)  # one live link per address: a new one replaces it
    token = new_token(32)
    now = utcnow()
    session.add(
        Invite(tenant_id=tenant_id, email=email, token_hash=sha256_hex(token), invited_by=by, created_at=now,
               expires_at=now + timedelta(hours=hours))
    )
    await session.commit()
    return token


async def pending_invite(session: AsyncSession, token: str) -> Invite | None:
    """The invitation this link's token names, unless it is unknown, used or expired."""
    found = await session.scalar(select(Invite).where(Invite.token_hash == sha256_hex(token)))
    if found is None or found.accepted_at is not None or found.expires_at <= utcnow():
        return None
    return found


async def accept(session: AsyncSession, pending: Invite, password: str) -> User:
    """The invited account, created in the commit that uses up the invitation."""
    pending.accepted_at = utcnow()
    await session.flush()
    await _withdraw_pending(session, pending.tenant_id, pending.email)
    try:
        return await create_user(session, pending.tenant_id, pending.email, password)
    except AccountError:
        await session.rollback()
        raise
