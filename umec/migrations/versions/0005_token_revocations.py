"""token revocations (per token and per node)

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'token_revocations',
        sa.Column('seq', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('jti', sa.String(length=64), nullable=True),
        sa.Column('node', sa.String(length=253), nullable=True),
        sa.Column('cutoff', sa.Float(), nullable=True),
        sa.Column('reason', sa.String(length=200), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('seq'),
    )
    op.create_index('ix_token_revocations_jti', 'token_revocations', ['jti'])
    op.create_index('ix_token_revocations_node', 'token_revocations', ['node'])
    op.create_index('ix_token_revocations_expires_at', 'token_revocations', ['expires_at'])


def downgrade() -> None:
    op.drop_index('ix_token_revocations_expires_at', table_name='token_revocations')
    op.drop_index('ix_token_revocations_node', table_name='token_revocations')
    op.drop_index('ix_token_revocations_jti', table_name='token_revocations')
    op.drop_table('token_revocations')
