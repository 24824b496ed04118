"""Tokens issued per hour, workload and node: ``token_issuance_counts`` (issue 14)

The dashboard's Tokens page counted what one process issued since it started (an in-memory
ledger): with two workers or three replicas, each page showed a part. Each process now adds its
counts every few seconds in one upsert (never a write on the token path); rows older than eight
days are pruned. Starts empty.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'token_issuance_counts',
        sa.Column('hour', sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column('workload', sa.String(512), primary_key=True),
        sa.Column('node', sa.String(253), primary_key=True),
        sa.Column('issued', sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('token_issuance_counts')
