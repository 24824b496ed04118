"""revocation generation: one number every revocation increments

``token_revocation_generation`` holds one row (``id`` 1). Every transaction that writes a
revocation increments ``generation`` in that same transaction. Writers of the row queue on its
lock, so the numbers commit in order: a reader that sees number N sees every revocation of every
number up to N. A follower that reads the number it read before its last whole-set read knows
that nothing was revoked since, at the cost of one primary-key read; only when the number moved
does it read the whole live set again. That makes polling cheap enough to do ten times a second
in every process, and the feed's answer to a follower that is current costs no set read.

Versions before 0010 do not increment it: run them only with followers from before 0010.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        'token_revocation_generation',
        sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('generation', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id'))
    op.bulk_insert(table, [{'id': 1, 'generation': 0}])


def downgrade() -> None:
    op.drop_table('token_revocation_generation')
