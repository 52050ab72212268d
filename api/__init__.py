"""The Canvas-compatible REST API (DESIGN.md section 5)."""

from api.app import create_app, known_scopes

__all__ = ["create_app", "known_scopes"]
