"""Alembic's environment: runs the migrations on the connection ``migrate.py`` hands over.

``migrate.py`` always opens the connection itself (async engine, ``run_sync``) and passes it
in ``config.attributes["connection"]``; this file never reads a URL or an ini file.
"""

from __future__ import annotations

from alembic import context

from streamward.api.record.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
