"""revocation stamp: which history a revocation generation number belongs to

After a backup is restored at generation G, new revocations are numbered G + 1, G + 2, … again.
A follower that held number H and reads only after those numbers reached H would take them for
the entries it holds and step over them. ``token_revocation_generation.stamp`` is a random value
that every writer replaces when it takes a number; each entry records the stamp it replaced
(``token_revocations.prev_stamp``, the stamp of the number before its own). A follower holding
(H, stamp) continues only when the row still has that stamp or the entry numbered H + 1 names
it; otherwise it reads the whole set. The row gets a stamp here; entries written before have
none (a follower reaching them reads the whole set once).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('token_revocation_generation') as batch:
        batch.add_column(sa.Column('stamp', sa.BigInteger(), nullable=True))
    with op.batch_alter_table('token_revocations') as batch:
        batch.add_column(sa.Column('prev_stamp', sa.BigInteger(), nullable=True))
    generation = sa.table('token_revocation_generation', sa.column('stamp', sa.BigInteger()))
    op.execute(generation.update().values(stamp=secrets.randbits(53)))


def downgrade() -> None:
    with op.batch_alter_table('token_revocations') as batch:
        batch.drop_column('prev_stamp')
    with op.batch_alter_table('token_revocation_generation') as batch:
        batch.drop_column('stamp')
