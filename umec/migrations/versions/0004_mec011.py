"""MEC 011 registry: services, subscriptions, traffic/DNS rules, application lifecycle

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mec011_services',
    sa.Column('ser_instance_id', sa.String(length=64), nullable=False),
    sa.Column('app_instance_id', sa.String(length=253), nullable=False),
    sa.Column('namespace', sa.String(length=253), nullable=False),
    sa.Column('body', sa.JSON(), nullable=False),
    sa.Column('etag', sa.String(length=80), nullable=False),
    sa.Column('liveness_interval', sa.Integer(), nullable=True),
    sa.Column('last_heartbeat', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('ser_instance_id')
    )
    with op.batch_alter_table('mec011_services', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mec011_services_app_instance_id'), ['app_instance_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_mec011_services_namespace'), ['namespace'], unique=False)

    op.create_table('mec011_subscriptions',
    sa.Column('subscription_id', sa.String(length=64), nullable=False),
    sa.Column('api', sa.String(length=16), nullable=False),
    sa.Column('app_instance_id', sa.String(length=253), nullable=False),
    sa.Column('namespace', sa.String(length=253), nullable=False),
    sa.Column('body', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('subscription_id')
    )
    with op.batch_alter_table('mec011_subscriptions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mec011_subscriptions_api'), ['api'], unique=False)
        batch_op.create_index(batch_op.f('ix_mec011_subscriptions_app_instance_id'), ['app_instance_id'], unique=False)

    op.create_table('mec011_rules',
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('app_instance_id', sa.String(length=253), nullable=False),
    sa.Column('rule_id', sa.String(length=253), nullable=False),
    sa.Column('body', sa.JSON(), nullable=False),
    sa.Column('etag', sa.String(length=80), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('kind', 'app_instance_id', 'rule_id')
    )
    op.create_table('mec011_app_states',
    sa.Column('app_instance_id', sa.String(length=253), nullable=False),
    sa.Column('ready_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('pending_action', sa.String(length=16), nullable=True),
    sa.Column('termination_deadline', sa.DateTime(timezone=True), nullable=True),
    sa.Column('terminated_action', sa.String(length=16), nullable=True),
    sa.Column('terminated_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('app_instance_id')
    )


def downgrade() -> None:
    op.drop_table('mec011_app_states')
    op.drop_table('mec011_rules')
    with op.batch_alter_table('mec011_subscriptions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mec011_subscriptions_app_instance_id'))
        batch_op.drop_index(batch_op.f('ix_mec011_subscriptions_api'))
    op.drop_table('mec011_subscriptions')
    with op.batch_alter_table('mec011_services', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mec011_services_namespace'))
        batch_op.drop_index(batch_op.f('ix_mec011_services_app_instance_id'))
    op.drop_table('mec011_services')
