"""The Canvas-compatible REST API (DESIGN.md section 5).

`create_app` and `known_scopes` are imported on first use, so that importing the package (as
`tep token create` does) does not load the web stack until it is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from api.app import create_app, known_scopes

__all__ = ["create_app", "known_scopes"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from api import app

        return getattr(app, name)
    raise AttributeError(f"module 'api' has no attribute {name!r}")
