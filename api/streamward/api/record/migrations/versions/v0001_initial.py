"""The record's first schema: sessions, runs, ownership_events, transcript_entries.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("project", sa.Text, primary_key=True),
        sa.Column("session_id", sa.Text, primary_key=True),
        sa.Column("route_id", sa.Text),
        sa.Column("session_key", sa.Text),
        sa.Column("generation", sa.BigInteger),
        sa.Column("status", sa.Text, nullable=False, server_default=""),
        sa.Column("reason", sa.Text),
        sa.Column("title", sa.Text),
        sa.Column("metadata", pg.JSONB, nullable=False, server_default="{}"),
        sa.Column("previous_session_id", sa.Text),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("last_activity_ms", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("archived_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("archived_history_id", sa.Text, nullable=False, server_default="0-0"),
        sa.Column("archived_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("sessions_project_created", "sessions", ["project", "created_ms", "session_id"])
    op.create_index("sessions_project_updated", "sessions", ["project", "updated_ms"])
    op.create_table(
        "runs",
        sa.Column("project", sa.Text, primary_key=True),
        sa.Column("session_id", sa.Text, primary_key=True),
        sa.Column("run_id", sa.Text, primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempt", sa.Integer),
        sa.Column("replica_id", sa.Text),
        sa.Column("token", sa.BigInteger),
        sa.Column("started_id", sa.Text),
        sa.Column("last_id", sa.Text),
        sa.Column("input_bytes", sa.Integer),
        sa.Column("outputs", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("updated_ms", sa.BigInteger),
    )
    op.create_table(
        "ownership_events",
        sa.Column("project", sa.Text, primary_key=True),
        sa.Column("session_id", sa.Text, primary_key=True),
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("replica_id", sa.Text),
        sa.Column("incarnation", sa.Text),
        sa.Column("token", sa.BigInteger),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("at_ms", sa.BigInteger),
    )
    op.create_table(
        "transcript_entries",
        sa.Column("project", sa.Text, primary_key=True),
        sa.Column("session_id", sa.Text, primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("run_id", sa.Text, nullable=False, server_default=""),
        sa.Column("token", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("data", pg.JSON),
        sa.Column("ts_ms", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("transcript_entries_ts", "transcript_entries", ["project", "ts_ms"])


def downgrade() -> None:
    op.drop_table("transcript_entries")
    op.drop_table("ownership_events")
    op.drop_table("runs")
    op.drop_table("sessions")
