"""sensor readings (Ruuvi RAWv2) and per-tag summary

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sensor_readings',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('tag_mac', sa.String(length=17), nullable=False),
    sa.Column('gateway_mac', sa.String(length=17), nullable=True),
    sa.Column('rssi', sa.Integer(), nullable=True),
    sa.Column('measured_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('payload', sa.String(length=48), nullable=False),
    sa.Column('measurement_sequence', sa.Integer(), nullable=True),
    sa.Column('temperature_c', sa.Float(), nullable=True),
    sa.Column('humidity_pct', sa.Float(), nullable=True),
    sa.Column('pressure_pa', sa.Integer(), nullable=True),
    sa.Column('acceleration_x_g', sa.Float(), nullable=True),
    sa.Column('acceleration_y_g', sa.Float(), nullable=True),
    sa.Column('acceleration_z_g', sa.Float(), nullable=True),
    sa.Column('tx_power_dbm', sa.Integer(), nullable=True),
    sa.Column('battery_v', sa.Float(), nullable=True),
    sa.Column('movement_counter', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tag_mac', 'payload', name='uq_sensor_readings_tag_payload')
    )
    with op.batch_alter_table('sensor_readings', schema=None) as batch_op:
        batch_op.create_index('ix_sensor_readings_tag_time', ['tag_mac', 'measured_at', 'id'], unique=False)
        batch_op.create_index('ix_sensor_readings_measured_at', ['measured_at'], unique=False)

    op.create_table('sensor_tags',
    sa.Column('mac', sa.String(length=17), nullable=False),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_gateway_mac', sa.String(length=17), nullable=True),
    sa.Column('last_rssi', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('mac')
    )
    with op.batch_alter_table('sensor_tags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sensor_tags_last_seen'), ['last_seen'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('sensor_tags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sensor_tags_last_seen'))
    op.drop_table('sensor_tags')
    with op.batch_alter_table('sensor_readings', schema=None) as batch_op:
        batch_op.drop_index('ix_sensor_readings_measured_at')
        batch_op.drop_index('ix_sensor_readings_tag_time')
    op.drop_table('sensor_readings')
