"""ingest tallies by minute: anomaly windows read every tenant's rows of a minute, and retention now deletes old ones

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 18:45:00.000000
"""

from __future__ import annotations

from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_ingest_tallies_minute', 'ingest_tallies', ['minute'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_ingest_tallies_minute', table_name='ingest_tallies')
