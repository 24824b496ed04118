"""revocation generation: one number every revocation takes, in commit order

``token_revocation_generation`` holds one row (``id`` 1). Every transaction that writes a
revocation first increments ``generation`` and stamps its entries with the new value
(``token_revocations.generation``). Writers queue on that row's lock from the increment to their
commit, so the numbers commit in order: a reader that sees number N sees every entry numbered up
to N. A follower holding everything up to H reads the number N, then only the entries numbered
in (H, N]: one primary-key read when nothing was revoked, a few rows when something was.

Entries written before the upgrade have no number; followers get them with their first whole
read. Versions before 0010 neither increment the number nor stamp entries: do not run them
beside 0010 followers (they would not see those versions' revocations until a whole read).

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
    with op.batch_alter_table('token_revocations') as batch:
        batch.add_column(sa.Column('generation', sa.BigInteger(), nullable=True))
    op.create_index('ix_token_revocations_generation', 'token_revocations', ['generation'])


def downgrade() -> None:
    op.drop_index('ix_token_revocations_generation', table_name='token_revocations')
    with op.batch_alter_table('token_revocations') as batch:
        batch.drop_column('generation')
    op.drop_table('token_revocation_generation')
