"""The database as the API sees it: one engine, a writer and a reader session factory."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker


@dataclasses.dataclass(frozen=True)
class Database:
    """`write` sessions take SQLite's write lock when they begin (so concurrent writers queue);
    `read` sessions do not, so a GET never waits behind a sweep on SQLite."""

    write: sessionmaker[Session]
    read: sessionmaker[Session]


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


DatabaseDep = Annotated[Database, Depends(get_database)]
