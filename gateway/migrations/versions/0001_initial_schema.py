"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 11:44:48.516517
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.database

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tenants',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('limits', sa.JSON(), nullable=True),
    sa.Column('created_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tenants'))
    )
    op.create_table('api_keys',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', gateway.database.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_api_keys_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys'))
    )
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_keys_prefix'), ['prefix'], unique=False)
        batch_op.create_index(batch_op.f('ix_api_keys_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('endpoints',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('event_types', sa.JSON(), nullable=False),
    sa.Column('rate_limit_per_second', sa.Float(), nullable=True),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', gateway.database.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_endpoints_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_endpoints'))
    )
    with op.batch_alter_table('endpoints', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_endpoints_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('sources',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('ingest_token', sa.String(length=64), nullable=False),
    sa.Column('priorities', sa.JSON(), nullable=True),
    sa.Column('created_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', gateway.database.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_sources_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sources')),
    sa.UniqueConstraint('ingest_token', name=op.f('uq_sources_ingest_token'))
    )
    with op.batch_alter_table('sources', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sources_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('endpoint_secrets',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('endpoint_id', sa.Uuid(), nullable=False),
    sa.Column('ciphertext', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', gateway.database.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['endpoint_id'], ['endpoints.id'], name=op.f('fk_endpoint_secrets_endpoint_id_endpoints'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_endpoint_secrets'))
    )
    with op.batch_alter_table('endpoint_secrets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_endpoint_secrets_endpoint_id'), ['endpoint_id'], unique=False)

    op.create_table('events',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('source_id', sa.Uuid(), nullable=True),
    sa.Column('external_id', sa.String(length=255), nullable=False),
    sa.Column('type', sa.String(length=255), nullable=False),
    sa.Column('priority', sa.String(length=16), nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('headers', sa.JSON(), nullable=False),
    sa.Column('provider_created_at', gateway.database.UTCDateTime(timezone=True), nullable=True),
    sa.Column('received_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('fanned_out_at', gateway.database.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['source_id'], ['sources.id'], name=op.f('fk_events_source_id_sources')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_events_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events')),
    sa.UniqueConstraint('tenant_id', 'source_id', 'external_id', name=op.f('uq_events_tenant_id_source_id_external_id'))
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_events_source_id'), ['source_id'], unique=False)
        batch_op.create_index('ix_events_tenant_received', ['tenant_id', 'received_at', 'id'], unique=False)
        batch_op.create_index('ix_events_unfanned', ['received_at'], unique=False, postgresql_where=sa.text('fanned_out_at IS NULL'), sqlite_where=sa.text('fanned_out_at IS NULL'))

    op.create_table('source_secrets',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('source_id', sa.Uuid(), nullable=False),
    sa.Column('ciphertext', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', gateway.database.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['source_id'], ['sources.id'], name=op.f('fk_source_secrets_source_id_sources'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_source_secrets'))
    )
    with op.batch_alter_table('source_secrets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_source_secrets_source_id'), ['source_id'], unique=False)

    op.create_table('deliveries',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('event_id', sa.Uuid(), nullable=False),
    sa.Column('endpoint_id', sa.Uuid(), nullable=False),
    sa.Column('priority', sa.String(length=16), nullable=False),
    sa.Column('is_replay', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempt_count', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', gateway.database.UTCDateTime(timezone=True), nullable=True),
    sa.Column('locked_until', gateway.database.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_status_code', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('last_attempt_at', gateway.database.UTCDateTime(timezone=True), nullable=True),
    sa.Column('completed_at', gateway.database.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['endpoint_id'], ['endpoints.id'], name=op.f('fk_deliveries_endpoint_id_endpoints'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['event_id'], ['events.id'], name=op.f('fk_deliveries_event_id_events'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_deliveries_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deliveries'))
    )
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_deliveries_due', ['next_attempt_at'], unique=False, postgresql_where=sa.text("status IN ('pending', 'failed')"), sqlite_where=sa.text("status IN ('pending', 'failed')"))
        batch_op.create_index(batch_op.f('ix_deliveries_endpoint_id'), ['endpoint_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_deliveries_event_id'), ['event_id'], unique=False)
        batch_op.create_index('ix_deliveries_tenant_created', ['tenant_id', 'created_at', 'id'], unique=False)
        batch_op.create_index('uq_deliveries_original', ['event_id', 'endpoint_id'], unique=True, postgresql_where=sa.text('NOT is_replay'), sqlite_where=sa.text('NOT is_replay'))

    op.create_table('attempts',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('delivery_id', sa.Uuid(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('started_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('response_excerpt', sa.Text(), nullable=True),
    sa.Column('trace_id', sa.String(length=32), nullable=True),
    sa.ForeignKeyConstraint(['delivery_id'], ['deliveries.id'], name=op.f('fk_attempts_delivery_id_deliveries'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_attempts_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_attempts'))
    )
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_attempts_delivery_id'), ['delivery_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_attempts_delivery_id'))

    op.drop_table('attempts')
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('uq_deliveries_original', postgresql_where=sa.text('NOT is_replay'), sqlite_where=sa.text('NOT is_replay'))
        batch_op.drop_index('ix_deliveries_tenant_created')
        batch_op.drop_index(batch_op.f('ix_deliveries_event_id'))
        batch_op.drop_index(batch_op.f('ix_deliveries_endpoint_id'))
        batch_op.drop_index('ix_deliveries_due', postgresql_where=sa.text("status IN ('pending', 'failed')"), sqlite_where=sa.text("status IN ('pending', 'failed')"))

    op.drop_table('deliveries')
    with op.batch_alter_table('source_secrets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_source_secrets_source_id'))

    op.drop_table('source_secrets')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_unfanned', postgresql_where=sa.text('fanned_out_at IS NULL'), sqlite_where=sa.text('fanned_out_at IS NULL'))
        batch_op.drop_index('ix_events_tenant_received')
        batch_op.drop_index(batch_op.f('ix_events_source_id'))

    op.drop_table('events')
    with op.batch_alter_table('endpoint_secrets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_endpoint_secrets_endpoint_id'))

    op.drop_table('endpoint_secrets')
    with op.batch_alter_table('sources', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sources_tenant_id'))

    op.drop_table('sources')
    with op.batch_alter_table('endpoints', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_endpoints_tenant_id'))

    op.drop_table('endpoints')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_keys_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_api_keys_prefix'))

    op.drop_table('api_keys')
    op.drop_table('tenants')
