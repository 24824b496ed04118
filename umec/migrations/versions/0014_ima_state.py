"""IMA runtime integrity: the verifier's per-node IMA state (issue 13)

``attest_nodes.ima_state`` (JSON, nullable) holds how many entries of the node's IMA list the
verifier accepted, the running PCR 10 value per bank after them and the resetCount /
restartCount of that boot, so each round replays only new entries (as Keylime does). Empty for
existing nodes: their agents send the full list once.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('attest_nodes') as batch:
        batch.add_column(sa.Column('ima_state', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('attest_nodes') as batch:
        batch.drop_column('ima_state')
