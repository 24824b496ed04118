"""pod revocations: a deleted pod's tokens are revoked with its admission record

``admission_pods.forgotten_at`` turns a deleted pod's record into a tombstone (never looked up,
never recorded again: a review racing the deletion cannot bring it back), kept 48 h.

``token_revocations.pod_uid`` names the pod of a ``kind = 'pod'`` entry: every token minted for
that pod is revoked. The entry is written in the transaction that deletes the pod's admission
record (the webhook saw the pod's DELETE, or the record was found to belong to no live pod).

A downgrade removes the pod entries, which versions before 0009 cannot read; the tokens they
revoked stay refused by issuance (no admission record) but not by resource servers, so
downgrade only with no pod deleted in the last token lifetime (5 min at most).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('admission_pods') as batch:
        batch.add_column(sa.Column('forgotten_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_admission_pods_forgotten_at', 'admission_pods', ['forgotten_at'])
    with op.batch_alter_table('token_revocations') as batch:
        batch.add_column(sa.Column('pod_uid', sa.String(length=64), nullable=True))
    op.create_index('ix_token_revocations_pod_uid', 'token_revocations', ['pod_uid'])


def downgrade() -> None:
    op.execute("DELETE FROM token_revocations WHERE kind = 'pod'")
    op.drop_index('ix_token_revocations_pod_uid', table_name='token_revocations')
    with op.batch_alter_table('token_revocations') as batch:
        batch.drop_column('pod_uid')
    op.execute("DELETE FROM admission_pods WHERE forgotten_at IS NOT NULL")
    op.drop_index('ix_admission_pods_forgotten_at', table_name='admission_pods')
    with op.batch_alter_table('admission_pods') as batch:
        batch.drop_column('forgotten_at')
