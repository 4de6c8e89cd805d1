"""Opening a tape store by location: :func:`open_store`."""

from __future__ import annotations

from pathlib import Path

from se.tape.sqlite_store import SQLiteStore
from se.tape.store import TapeStore

__all__ = ["open_store"]


async def open_store(location: str | Path) -> TapeStore:
    """Open the store named by ``location``: a PostgreSQL URL, or else an SQLite file path."""
    if str(location).startswith(("postgresql://", "postgres://")):
        # Imported here: psycopg is an optional dependency (the ``postgres`` extra).
        from se.tape.pgstore import PostgresStore

        return await PostgresStore.open(str(location))
    return await SQLiteStore.open(location)
