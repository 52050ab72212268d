"""Canvas's tables as Canvas has them; tep's own tables apart, in their own schema

Moves a database made by revisions 0001-0002 (always `managed` mode) over to the schema of
models/canvas.py and models/tep.py. A new database never runs this: it is built from the models
and stamped (migrations/__init__.py).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 22:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    raise NotImplementedError("legacy conversion: being written")


def downgrade() -> None:
    raise NotImplementedError("0003 moves data between schemas; restore a backup instead")
