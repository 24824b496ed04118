"""Stateless challenges: ``attest_nodes.challenge_seq`` and ``last_pass_nonce``; no
``attest_nonces`` (issue 15)

A challenge wrote a nonce row (a durable commit per round) that evidence then spent. A nonce is
now a MAC under the challenge key over the node's identity and its challenge counter
(attest.core.freshness), so issuing one writes nothing; recording a verdict moves the node's
``challenge_seq`` on in the statement that checks it (the spend). ``last_pass_nonce`` is the
nonce of the node's latest passing quote, which the k3s join asks for (it read the spent nonce
rows before). Nonces in flight at the upgrade are refused as unknown: the agent asks again.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('attest_nodes', sa.Column('challenge_seq', sa.BigInteger(), nullable=False,
                                            server_default='0'))
    op.add_column('attest_nodes', sa.Column('last_pass_nonce', sa.String(64), nullable=True))
    op.drop_index('ix_attest_nonces_node', table_name='attest_nonces')
    op.drop_index('ix_attest_nonces_expires_at', table_name='attest_nonces')
    op.drop_table('attest_nonces')


def downgrade() -> None:
    op.create_table(
        'attest_nonces',
        sa.Column('nonce', sa.String(length=128), nullable=False),
        sa.Column('node', sa.String(length=253), nullable=False),
        sa.Column('selection', sa.JSON(), nullable=False),
        sa.Column('issued_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('consumed_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['node'], ['attest_nodes.name'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('nonce'))
    op.create_index('ix_attest_nonces_expires_at', 'attest_nonces', ['expires_at'])
    op.create_index('ix_attest_nonces_node', 'attest_nonces', ['node'])
    with op.batch_alter_table('attest_nodes') as batch:
        batch.drop_column('last_pass_nonce')
        batch.drop_column('challenge_seq')
