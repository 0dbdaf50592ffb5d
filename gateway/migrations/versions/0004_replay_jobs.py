"""replay jobs, redrive offsets, Stripe API keys on sources

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 13:26:45.840569
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.database

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('replay_jobs',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('since', gateway.database.UTCDateTime(timezone=True), nullable=True),
    sa.Column('until', gateway.database.UTCDateTime(timezone=True), nullable=True),
    sa.Column('types', sa.JSON(), nullable=True),
    sa.Column('source_id', sa.Uuid(), nullable=True),
    sa.Column('endpoint_id', sa.Uuid(), nullable=True),
    sa.Column('only_failed', sa.Boolean(), nullable=False),
    sa.Column('total', sa.Integer(), nullable=True),
    sa.Column('done', sa.Integer(), nullable=False),
    sa.Column('skipped', sa.Integer(), nullable=False),
    sa.Column('cursor_at', gateway.database.UTCDateTime(timezone=True), nullable=True),
    sa.Column('cursor_id', sa.String(length=255), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', gateway.database.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', gateway.database.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['endpoint_id'], ['endpoints.id'], name=op.f('fk_replay_jobs_endpoint_id_endpoints')),
    sa.ForeignKeyConstraint(['source_id'], ['sources.id'], name=op.f('fk_replay_jobs_source_id_sources')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_replay_jobs_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_replay_jobs'))
    )
    with op.batch_alter_table('replay_jobs', schema=None) as batch_op:
        batch_op.create_index('ix_replay_jobs_active', ['updated_at'], unique=False, postgresql_where=sa.text("status IN ('queued', 'running')"), sqlite_where=sa.text("status IN ('queued', 'running')"))
        batch_op.create_index('ix_replay_jobs_tenant_created', ['tenant_id', 'created_at', 'id'], unique=False)

    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('replay_job_id', sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column('retry_offset', sa.Integer(), server_default=sa.text('0'), nullable=False))
        batch_op.create_index('ix_deliveries_replay_job', ['replay_job_id', 'status'], unique=False, postgresql_where=sa.text('replay_job_id IS NOT NULL'), sqlite_where=sa.text('replay_job_id IS NOT NULL'))

    with op.batch_alter_table('sources', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stripe_api_key', sa.LargeBinary(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('sources', schema=None) as batch_op:
        batch_op.drop_column('stripe_api_key')

    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_replay_job', postgresql_where=sa.text('replay_job_id IS NOT NULL'), sqlite_where=sa.text('replay_job_id IS NOT NULL'))
        batch_op.drop_column('retry_offset')
        batch_op.drop_column('replay_job_id')

    with op.batch_alter_table('replay_jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_replay_jobs_tenant_created')
        batch_op.drop_index('ix_replay_jobs_active', postgresql_where=sa.text("status IN ('queued', 'running')"), sqlite_where=sa.text("status IN ('queued', 'running')"))

    op.drop_table('replay_jobs')
