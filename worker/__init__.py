"""Wiring: settings, the Celery app and beat schedule, and the `tep` CLI.

`celery -A worker ...` finds :data:`app` here. The app is built on first access, so importing the
package (as the CLI does) never fails on settings; building it validates them, and a bad value
stops the process with one line on stderr instead of a traceback.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    app: Celery

_app: Celery | None = None


def get_app() -> Celery:
    global _app
    if _app is None:
        from worker.celery_app import create_app
        from worker.settings import SettingsError, get_settings

        try:
            settings = get_settings()
        except SettingsError as error:
            print(f"tep: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        _app = create_app(settings)
    return _app


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        return get_app()
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
