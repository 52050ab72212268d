"""API tokens and who is calling.

A token is a random secret shown once; the database keeps only its SHA-256 hash (the secret has
384 bits of entropy, so a plain hash cannot be brute-forced and needs no salt) and its first
characters as a hint for operators. Each token belongs to one user in one root account and may
carry Canvas developer-key scopes (`url:GET|/api/v1/accounts/:account_id/...`): a scoped token
may call only those endpoints. Tokens live in tep's own table (`api_tokens` in `TEP_SCHEMA`): on
Canvas's database, Canvas's own `access_tokens` are Canvas's, and tep neither reads nor writes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import secrets
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db import DatabaseDep
from api.errors import WWW_AUTHENTICATE, ApiError
from models import Account, ApiToken, Pseudonym, User, real_accounts, transaction, utcnow
from tasks.lifecycle import LifecycleError, require_root_account

SECRET_BYTES = 48
TOKEN_HINT_LENGTH = 5  # as Canvas shows a token: its first five characters

_ROUTE_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")

bearer = HTTPBearer(
    auto_error=False,
    description="An API token from `tep token create`, sent as `Authorization: Bearer <token>`.",
)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def route_scope(method: str, path: str) -> str:
    """Canvas's scope for an endpoint: `url:GET|/api/v1/accounts/:account_id/...`."""
    canvas_path = _ROUTE_PARAM.sub(r":\1", path)
    return f"url:{method.upper()}|{canvas_path}"


@dataclasses.dataclass(frozen=True)
class Caller:
    """The token's owner: a user acting in one root account."""

    token_id: int
    user_id: int
    root_account_id: int
    scopes: tuple[str, ...] | None  # None: every endpoint of the account


def create_token(
    session: Session,
    *,
    account_id: int,
    user_id: int,
    scopes: Sequence[str] = (),
    known_scopes: Sequence[str] = (),
) -> tuple[ApiToken, str]:
    """Store a new token for `user_id` in root account `account_id`; returns it and its secret.

    Raises LifecycleError (a message for people) for an unknown account or user, a user with no
    login in the account, or a scope that names no endpoint of this API.
    """
    require_root_account(session, account_id)
    if session.get(User, user_id) is None:
        raise LifecycleError(f"no user with id {user_id}")
    login = session.scalar(
        select(Pseudonym.id).where(
            Pseudonym.user_id == user_id,
            Pseudonym.account_id == account_id,
            Pseudonym.workflow_state != "deleted",
        )
    )
    if login is None:
        raise LifecycleError(f"user {user_id} has no login in account {account_id}")
    unknown = [scope for scope in scopes if scope not in known_scopes]
    if unknown:
        raise LifecycleError(
            f"unknown scope(s) {', '.join(unknown)}; known scopes: {', '.join(known_scopes)}"
        )
    secret = secrets.token_urlsafe(SECRET_BYTES)
    token = ApiToken(
        user_id=user_id,
        root_account_id=account_id,
        crypted_token=hash_token(secret),
        token_hint=secret[:TOKEN_HINT_LENGTH],
        scopes=json.dumps(sorted(set(scopes))) if scopes else None,
    )
    session.add(token)
    session.flush()
    return token, secret


def _unauthenticated(message: str) -> ApiError:
    return ApiError(401, message, headers=WWW_AUTHENTICATE)


def authenticate(
    request: Request,
    db: DatabaseDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """FastAPI dependency: the caller, or a 401 (missing or bad token, insufficient scopes)."""
    if credentials is None or not credentials.credentials:
        raise _unauthenticated("user authorization required")
    now = utcnow()
    with transaction(db.read, commit=False) as session:
        row = session.execute(
            select(ApiToken, Account.workflow_state)
            .join(Account, Account.id == ApiToken.root_account_id)
            # The token's account must still be a root account, and never Canvas's dummy
            # account 0 (every root account's `root_account_id`).
            .where(
                ApiToken.crypted_token == hash_token(credentials.credentials),
                Account.is_root,
                real_accounts(),
            )
        ).one_or_none()
        if row is None:
            raise _unauthenticated("Invalid access token.")
        token, account_state = row
        if token.workflow_state != "active" or account_state == "deleted":
            raise _unauthenticated("Invalid access token.")
        if token.expires_at is not None and token.expires_at <= now:
            raise _unauthenticated("Invalid access token.")
        caller = Caller(
            token_id=token.id,
            user_id=token.user_id,
            root_account_id=token.root_account_id,
            scopes=tuple(json.loads(token.scopes)) if token.scopes else None,
        )
    if caller.scopes is not None:
        route = request.scope.get("route")
        path = getattr(route, "path", request.url.path)
        if route_scope(request.method, path) not in caller.scopes:
            # No WWW-Authenticate: the token is good, it just may not do this.
            raise ApiError(401, "Insufficient scopes on access token.")
    return caller


CallerDep = Annotated[Caller, Depends(authenticate)]
