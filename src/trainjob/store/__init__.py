"""Durable job state: a SQLite database (WAL) that any process can read."""

from trainjob.store.sqlite import JobRow, Store

__all__ = ["JobRow", "Store"]
