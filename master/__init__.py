"""The converter master: job queue (SQLite), video storage, HTTP API (Tornado)."""
