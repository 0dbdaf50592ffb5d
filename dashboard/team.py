"""The team: the tenant's dashboard users and invitations. An invitation is a single-use link
shown once to the inviter (no mail server needed); the invitee chooses a password there. Any
member can withdraw an invitation or remove another member, who is signed out at once (there are
no roles: everyone manages everything, as the page says)."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Request, get, post
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard.accounts import AccountError, invite, normal_email, remove_user
from dashboard.models import Invite, User
from dashboard.sessions import Viewer
from dashboard.web import PREFIX, field, form, page, see_other, see_other_showing, shown_once
from gateway.database import utcnow
from gateway.problems import not_found
from gateway.settings import Settings
from tenants.crypto import SecretBox


async def _team(request: Request[Any, Any, Any], viewer: Viewer, db: AsyncSession, status_code: int = 200, **context: Any) -> Any:
    users = await db.scalars(select(User).where(User.tenant_id == viewer.tenant_id).order_by(User.created_at))
    pending = await db.scalars(
        select(Invite)
        .where(Invite.tenant_id == viewer.tenant_id, Invite.accepted_at.is_(None), Invite.expires_at > utcnow())
        .order_by(Invite.created_at.desc())
    )
    return page(request, "team.html", status_code, users=list(users), invites=list(pending), **{"errors": {}, **context})


@get("/team", operation_id="dashboardTeam", include_in_schema=False)
async def team(request: Request[Any, Any, Any], viewer: Viewer, db_session: AsyncSession, secret_box: SecretBox) -> Any:
    return await _team(request, viewer, db_session, **shown_once(request, secret_box))


@post("/team/invite", operation_id="dashboardInvite", include_in_schema=False)
async def invite_teammate(
    request: Request[Any, Any, Any], viewer: Viewer, db_session: AsyncSession, settings: Settings, secret_box: SecretBox
) -> Any:
    email = field(await form(request), "email")
    try:
        token = await invite(db_session, viewer.tenant_id, email, viewer.user.id, settings.dashboard_invite_hours)
    except AccountError as exc:
        return await _team(request, viewer, db_session, 400, errors={exc.field: str(exc)}, email=email)
    link = f"{settings.public_url.rstrip('/')}{PREFIX}/invite/{token}"
    return see_other_showing(request, secret_box, f"{PREFIX}/team", "invited", link=link, invited=normal_email(email))


@post("/team/{user_id:uuid}/remove", operation_id="dashboardRemoveTeammate", include_in_schema=False)
async def remove_teammate(request: Request[Any, Any, Any], viewer: Viewer, db_session: AsyncSession, user_id: uuid.UUID) -> Any:
    user = await db_session.scalar(select(User).where(User.id == user_id, User.tenant_id == viewer.tenant_id))
    if user is None:
        raise not_found("user")
    if user.id == viewer.user.id:  # someone must be left to let people in
        return await _team(request, viewer, db_session, 409, errors={"_": "You cannot remove yourself: ask a teammate to."})
    await remove_user(db_session, user)
    return see_other(f"{PREFIX}/team", "teammate-removed")


@post("/team/invites/{invite_id:uuid}/withdraw", operation_id="dashboardWithdrawInvitation", include_in_schema=False)
async def withdraw_invitation(viewer: Viewer, db_session: AsyncSession, invite_id: uuid.UUID) -> Any:
    withdrawn = await db_session.scalar(
        delete(Invite)
        .where(Invite.id == invite_id, Invite.tenant_id == viewer.tenant_id, Invite.accepted_at.is_(None))
        .returning(Invite.id)
    )
    if withdrawn is None:
        raise not_found("invitation")
    await db_session.commit()
    return see_other(f"{PREFIX}/team", "invitation-withdrawn")
