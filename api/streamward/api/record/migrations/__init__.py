"""Alembic migrations of the record's schema (``streamward db upgrade``)."""
