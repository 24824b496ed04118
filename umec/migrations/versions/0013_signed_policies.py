"""signed appraisal policies: version, envelope and signers per policy; a policy event log

``attest_policies`` gains the applied policy's ``version`` (python-tuf's rollback counter), the
DSSE ``envelope`` it came in (when signed), the key ids that signed it and its payload
``digest``. ``attest_policy_events`` records every applied and every refused policy (rollback,
wrong signer, below threshold, altered envelope, unsigned while signers are configured): the
history `umec policy history` shows and `umec policy rollback` copies from. Existing policies
keep their document; their version stays empty (unversioned, applied before signing existed).

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('attest_policies') as batch:
        batch.add_column(sa.Column('version', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('envelope', sa.Text(), nullable=True))
        batch.add_column(sa.Column('signers', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('digest', sa.String(71), nullable=True))
    op.create_table(
        'attest_policy_events',
        sa.Column('id', sa.String(36), primary_key=True),
        sa.Column('policy', sa.String(128), nullable=False, index=True),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column('outcome', sa.String(16), nullable=False),
        sa.Column('version', sa.Integer(), nullable=True),
        sa.Column('check', sa.String(64), nullable=True),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.Column('signers', sa.JSON(), nullable=False),
        sa.Column('digest', sa.String(71), nullable=True),
        sa.Column('document', sa.Text(), nullable=True),
        sa.Column('envelope', sa.Text(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table('attest_policy_events')
    with op.batch_alter_table('attest_policies') as batch:
        batch.drop_column('digest')
        batch.drop_column('signers')
        batch.drop_column('envelope')
        batch.drop_column('version')
