"""The record's tables (SQLAlchemy Core): what the archiver writes and the API reads.

The migrations in ``migrations/versions`` create exactly these; a test compares them.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

metadata = sa.MetaData()

# one row per session: its Redis meta as of the last archive pass, plus how far its log is
# archived (``archived_seq``: every entry with seq <= it is in transcript_entries)
sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("project", sa.Text, primary_key=True),
    sa.Column("session_id", sa.Text, primary_key=True),
    sa.Column("route_id", sa.Text),
    sa.Column("session_key", sa.Text),
    sa.Column("generation", sa.BigInteger),
    sa.Column("status", sa.Text, nullable=False, server_default=""),
    sa.Column("reason", sa.Text),
    sa.Column("title", sa.Text),
    # the whole meta hash (JSONB: filterable with @>), what the columns above are read from
    sa.Column("metadata", pg.JSONB, nullable=False, server_default="{}"),
    sa.Column("previous_session_id", sa.Text),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
    sa.Column("last_activity_ms", sa.BigInteger, nullable=False),
    sa.Column("last_seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("archived_seq", sa.BigInteger, nullable=False, server_default="0"),
    # the last ownership-history stream id archived ("0-0": none)
    sa.Column("archived_history_id", sa.Text, nullable=False, server_default="0-0"),
    sa.Column("archived_ms", sa.BigInteger, nullable=False),
)
# the listing: newest first by (created_ms, session_id), per project
sa.Index(
    "sessions_project_created", sessions.c.project, sessions.c.created_ms, sessions.c.session_id
)
sa.Index("sessions_project_updated", sessions.c.project, sessions.c.updated_ms)

runs = sa.Table(
    "runs",
    metadata,
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

ownership_events = sa.Table(
    "ownership_events",
    metadata,
    sa.Column("project", sa.Text, primary_key=True),
    sa.Column("session_id", sa.Text, primary_key=True),
    # the sw:{S}:history stream id: unique per session, and its order
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("replica_id", sa.Text),
    sa.Column("incarnation", sa.Text),
    sa.Column("token", sa.BigInteger),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("at_ms", sa.BigInteger),
)

transcript_entries = sa.Table(
    "transcript_entries",
    metadata,
    sa.Column("project", sa.Text, primary_key=True),
    sa.Column("session_id", sa.Text, primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False, server_default=""),
    sa.Column("token", sa.BigInteger, nullable=False, server_default="0"),
    # JSON, not JSONB: JSON keeps the text as shipped (key order, duplicates), so an entry
    # read from the archive renders exactly like the same entry read from Redis; queries
    # cast (data::jsonb)
    sa.Column("data", pg.JSON(none_as_null=False)),
    sa.Column("ts_ms", sa.BigInteger, nullable=False, server_default="0"),
)
# retention deletes by age: the oldest entries of a project first
sa.Index("transcript_entries_ts", transcript_entries.c.project, transcript_entries.c.ts_ms)
