"""k3s join tokens in umec's database: ``attest_join_tokens`` (issue 13, part 2 hardening)

The server kept no record of the bootstrap-token Secrets it created and listed ``kube-system``'s
Secrets to find a node's earlier tokens. Kubernetes RBAC cannot narrow ``list`` to a label, so
that meant reading every Secret there (k3s's own credentials included). Now each token the
server creates is a row: node, token id (the Secret's name follows), sha256 of the verdict's
nonce, issued / expiry / revoked / deleted times. ``(node, verdict)`` is unique: one verdict, one
token, decided atomically across replicas. Starts empty: tokens made before the upgrade expire
on their own within their lifetime (minutes).

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'attest_join_tokens',
        sa.Column('id', sa.String(36), primary_key=True),
        sa.Column('node', sa.String(253), nullable=False, index=True),
        sa.Column('token_id', sa.String(6), nullable=False),
        sa.Column('verdict', sa.String(64), nullable=False),
        sa.Column('issued_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint('node', 'verdict', name='uq_attest_join_tokens_verdict'),
    )


def downgrade() -> None:
    op.drop_table('attest_join_tokens')
