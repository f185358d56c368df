"""The durable record: PostgreSQL beside Redis (tables, migrations, the archiver, reads)."""
