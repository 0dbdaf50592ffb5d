"""fairness and tenant limits: per-tenant delivery concurrency override, indexes for the fair claim

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 12:20:40.285890
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_deliveries_open', ['tenant_id', 'priority', 'next_attempt_at'], unique=False, postgresql_where=sa.text("status IN ('pending', 'failed')"), sqlite_where=sa.text("status IN ('pending', 'failed')"))
        batch_op.create_index('ix_deliveries_leased', ['tenant_id', 'locked_until'], unique=False, postgresql_where=sa.text('locked_until IS NOT NULL'), sqlite_where=sa.text('locked_until IS NOT NULL'))

    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('delivery_concurrency', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.drop_column('delivery_concurrency')

    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_leased', postgresql_where=sa.text('locked_until IS NOT NULL'), sqlite_where=sa.text('locked_until IS NOT NULL'))
        batch_op.drop_index('ix_deliveries_open', postgresql_where=sa.text("status IN ('pending', 'failed')"), sqlite_where=sa.text("status IN ('pending', 'failed')"))
