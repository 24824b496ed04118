"""node trust epochs: node revocations that need no clock

Every state change that ends a node's trust period (leaving ``trusted``, removal, rename)
increments ``attest_nodes.trust_epoch`` in the same transaction; access tokens carry the epoch
they were minted in, and a node revocation names the last revoked epoch
(``token_revocations.node_epoch``: tokens with ``node_epoch <= E`` are revoked) instead of a
time cutoff that a clock step could move.

Existing nodes start at epoch 1. Node revocations written before the upgrade revoke epoch 0,
which is what tokens minted before the upgrade (no ``node_epoch`` claim) count as: fail closed.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('attest_nodes') as batch:
        batch.add_column(sa.Column('trust_epoch', sa.Integer(), nullable=False,
                                   server_default='1'))
    with op.batch_alter_table('token_revocations') as batch:
        batch.add_column(sa.Column('node_epoch', sa.Integer(), nullable=True))
    op.execute("UPDATE token_revocations SET node_epoch = 0 WHERE kind = 'node'")


def downgrade() -> None:
    with op.batch_alter_table('token_revocations') as batch:
        batch.drop_column('node_epoch')
    with op.batch_alter_table('attest_nodes') as batch:
        batch.drop_column('trust_epoch')
