"""dashboard: users, login sessions, invitations; redrive of chosen dead letters

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 07:33:19.456818
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.database

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dashboard_users',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('password_hash', sa.String(length=200), nullable=False),
    sa.Column('created_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_login_at', gateway.database.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_dashboard_users_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dashboard_users')),
    sa.UniqueConstraint('email', name=op.f('uq_dashboard_users_email'))
    )
    with op.batch_alter_table('dashboard_users', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dashboard_users_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('dashboard_invites',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('invited_by', sa.Uuid(), nullable=True),
    sa.Column('created_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('accepted_at', gateway.database.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['invited_by'], ['dashboard_users.id'], name=op.f('fk_dashboard_invites_invited_by_dashboard_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_dashboard_invites_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dashboard_invites')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_dashboard_invites_token_hash'))
    )
    with op.batch_alter_table('dashboard_invites', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dashboard_invites_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('dashboard_sessions',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('csrf_token', sa.String(length=64), nullable=False),
    sa.Column('created_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_dashboard_sessions_tenant_id_tenants'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['dashboard_users.id'], name=op.f('fk_dashboard_sessions_user_id_dashboard_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dashboard_sessions')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_dashboard_sessions_token_hash'))
    )
    with op.batch_alter_table('dashboard_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dashboard_sessions_user_id'), ['user_id'], unique=False)

    with op.batch_alter_table('replay_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('delivery_ids', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('replay_jobs', schema=None) as batch_op:
        batch_op.drop_column('delivery_ids')

    with op.batch_alter_table('dashboard_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dashboard_sessions_user_id'))

    op.drop_table('dashboard_sessions')
    with op.batch_alter_table('dashboard_invites', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dashboard_invites_tenant_id'))

    op.drop_table('dashboard_invites')
    with op.batch_alter_table('dashboard_users', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dashboard_users_tenant_id'))

    op.drop_table('dashboard_users')
