"""The job store: the schema and its migrations, jobs and their outbox, the effect ledger, the delivery-attempt
log and API keys, in one SQL database (SQLite or PostgreSQL)."""
