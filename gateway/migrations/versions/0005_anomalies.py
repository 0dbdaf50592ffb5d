"""anomaly detection and observability: billing facts, trace context, ingest tallies, feature windows, models, anomalies, dead-letter index

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 14:05:28.107119
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.database

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('anomaly_runs',
    sa.Column('window_start', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('tenants', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('window_start', name=op.f('pk_anomaly_runs'))
    )
    op.create_table('anomalies',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('detector', sa.String(length=100), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('explanation', sa.JSON(), nullable=False),
    sa.Column('features', sa.JSON(), nullable=False),
    sa.Column('started_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ended_at', gateway.database.UTCDateTime(timezone=True), nullable=True),
    sa.Column('windows', sa.Integer(), nullable=False),
    sa.Column('acknowledged_at', gateway.database.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_anomalies_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_anomalies'))
    )
    with op.batch_alter_table('anomalies', schema=None) as batch_op:
        batch_op.create_index('ix_anomalies_tenant_started', ['tenant_id', 'started_at', 'id'], unique=False)
        batch_op.create_index('uq_anomalies_open', ['tenant_id', 'kind'], unique=True, postgresql_where=sa.text('ended_at IS NULL'), sqlite_where=sa.text('ended_at IS NULL'))

    op.create_table('anomaly_models',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('trained_at', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('windows', sa.Integer(), nullable=False),
    sa.Column('blob', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_anomaly_models_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_anomaly_models'))
    )
    op.create_table('feature_windows',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('start', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('seconds', sa.Integer(), nullable=False),
    sa.Column('features', sa.JSON(), nullable=False),
    sa.Column('last_active', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_feature_windows_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'start', name=op.f('pk_feature_windows'))
    )
    with op.batch_alter_table('feature_windows', schema=None) as batch_op:
        batch_op.create_index('ix_feature_windows_start', ['start'], unique=False)

    op.create_table('ingest_tallies',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('minute', gateway.database.UTCDateTime(timezone=True), nullable=False),
    sa.Column('duplicates', sa.Integer(), nullable=False),
    sa.Column('bad_signatures', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_ingest_tallies_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'minute', name=op.f('pk_ingest_tallies'))
    )
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.create_index('ix_attempts_started', ['started_at'], unique=False)

    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_deliveries_dead', ['tenant_id', 'created_at'], unique=False, postgresql_where=sa.text("status = 'dead'"), sqlite_where=sa.text("status = 'dead'"))

    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('customer', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('card_fingerprint', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('amount', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('trace_context', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_events_received', ['received_at'], unique=False)
        batch_op.create_index('ix_events_tenant_customer', ['tenant_id', 'customer'], unique=False, postgresql_where=sa.text('customer IS NOT NULL'), sqlite_where=sa.text('customer IS NOT NULL'))

    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('anomaly_thresholds', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.drop_column('anomaly_thresholds')

    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_tenant_customer', postgresql_where=sa.text('customer IS NOT NULL'), sqlite_where=sa.text('customer IS NOT NULL'))
        batch_op.drop_index('ix_events_received')
        batch_op.drop_column('trace_context')
        batch_op.drop_column('amount')
        batch_op.drop_column('card_fingerprint')
        batch_op.drop_column('customer')

    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_dead', postgresql_where=sa.text("status = 'dead'"), sqlite_where=sa.text("status = 'dead'"))

    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.drop_index('ix_attempts_started')

    op.drop_table('ingest_tallies')
    with op.batch_alter_table('feature_windows', schema=None) as batch_op:
        batch_op.drop_index('ix_feature_windows_start')

    op.drop_table('feature_windows')
    op.drop_table('anomaly_models')
    with op.batch_alter_table('anomalies', schema=None) as batch_op:
        batch_op.drop_index('uq_anomalies_open', postgresql_where=sa.text('ended_at IS NULL'), sqlite_where=sa.text('ended_at IS NULL'))
        batch_op.drop_index('ix_anomalies_tenant_started')

    op.drop_table('anomalies')
    op.drop_table('anomaly_runs')
