"""The database as the API sees it: one engine, a writer and a reader session factory, and
whose Canvas tables these are (`TEP_CANVAS_TABLES`)."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from models import CANVAS_TABLES_EXISTING, CANVAS_TABLES_MANAGED


@dataclasses.dataclass(frozen=True)
class Database:
    """`write` sessions take SQLite's write lock when they begin (so concurrent writers queue);
    `read` sessions do not, so a GET never waits behind a sweep on SQLite."""

    write: sessionmaker[Session]
    read: sessionmaker[Session]
    # `managed`: tep's migrations made Canvas's tables and tep may create Canvas objects in them;
    # `existing`: they are a real Canvas's, which owns its users, courses and sections.
    canvas_tables: str = CANVAS_TABLES_MANAGED

    @property
    def on_canvas(self) -> bool:
        return self.canvas_tables == CANVAS_TABLES_EXISTING


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


DatabaseDep = Annotated[Database, Depends(get_database)]
