"""endpoint rate limits of at least 0.001/s (the API's floor since), so none overflows the limiter

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 18:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE endpoints SET rate_limit_per_second = 0.001 WHERE rate_limit_per_second < 0.001")


def downgrade() -> None:
    """Nothing to undo: the raised limits are valid in either schema."""
