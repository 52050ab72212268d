"""PostgreSQL levers for failure tests: hold a table lock so that sweeps stop at a known point,
see who is waiting for it, and cut a backend off. Only ever on this session's scratch database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text

from models import Schemas, StateChange

# The session's PostgreSQL database has the default schemas: Canvas's tables in `public`, tep's
# own (the audit table among them) in `tep`.
AUDIT_TABLE = f"{Schemas().tep}.{StateChange.__tablename__}"
PAIRINGS_TABLE = "temporary_enrollment_pairings"


@contextmanager
def table_locked(engine: Engine, table: str, mode: str) -> Iterator[Connection]:
    """Hold `LOCK TABLE table IN mode MODE` until the block ends (then roll back)."""
    with engine.connect() as connection:
        transaction = connection.begin()
        connection.execute(text(f"LOCK TABLE {table} IN {mode} MODE"))
        try:
            yield connection
        finally:
            transaction.rollback()


def backends_waiting_for(engine: Engine, table: str) -> list[int]:
    """Pids of other backends of this database that wait for a lock on `table`."""
    with engine.connect() as connection:
        return list(
            connection.scalars(
                text(
                    """
                    SELECT DISTINCT l.pid FROM pg_locks l
                    JOIN pg_stat_activity a ON a.pid = l.pid
                    WHERE NOT l.granted AND l.relation = CAST(:table AS regclass)
                      AND a.datname = current_database() AND l.pid <> pg_backend_pid()
                      AND a.backend_type = 'client backend'
                    ORDER BY l.pid
                    """
                ),
                {"table": table},
            )
        )


def backend_alive(engine: Engine, pid: int) -> bool:
    with engine.connect() as connection:
        return bool(
            connection.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            )
        )


def terminate_backend(engine: Engine, pid: int) -> None:
    """`pg_terminate_backend`, refused for any backend not connected to this database."""
    with engine.connect() as connection:
        terminated = connection.scalar(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid = :pid AND datname = current_database()"
            ),
            {"pid": pid},
        )
    assert terminated, f"backend {pid} is not one of this database's"
