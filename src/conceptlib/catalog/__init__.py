"""The catalog: SQLite (or PostgreSQL) tables, engine set-up, numbered migrations,
queries and search. Never imports torch; knows nothing of embedding files."""
