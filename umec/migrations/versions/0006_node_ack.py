"""operator acknowledgement of untrusted nodes (policy require_ack)

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('attest_nodes') as batch:
        batch.add_column(sa.Column('acked_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('attest_nodes') as batch:
        batch.drop_column('acked_at')
