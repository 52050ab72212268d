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
import datetime as dt
import hashlib
import json
import logging
import re
import secrets
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import BackgroundTasks, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Exists, exists, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from api.db import DatabaseDep
from api.errors import WWW_AUTHENTICATE, ApiError
from models import Account, ApiToken, Pseudonym, User, real_accounts, transaction, utcnow
from tasks.lifecycle import LifecycleError, require_root_account

log = logging.getLogger("tep.api")

SECRET_BYTES = 48
TOKEN_HINT_LENGTH = 5  # as Canvas shows a token: its first five characters
# `last_used_at` is written at most this often per token: a busy client would otherwise make
# every read a write.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)
# A token's state once revoked (Canvas's access tokens use the same word).
REVOKED = "deleted"
# The states of a user, and of a login, that a token no longer acts for: Canvas deletes users and
# logins by state, and suspends a user by suspending their logins (`Pseudonym#suspended?`).
GONE_STATES = ("deleted", "suspended")

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


def live_login(user_id: Any, account_id: Any) -> Exists:
    """SQL: the user has a login in the account that is neither deleted nor suspended."""
    return exists().where(
        Pseudonym.user_id == user_id,
        Pseudonym.account_id == account_id,
        Pseudonym.workflow_state.not_in(GONE_STATES),
    )


def create_token(
    session: Session,
    *,
    account_id: int,
    user_id: int,
    scopes: Sequence[str] = (),
    known_scopes: Sequence[str] = (),
    expires_at: dt.datetime | None = None,
) -> tuple[ApiToken, str]:
    """Store a new token for `user_id` in root account `account_id`; returns it and its secret.

    Raises LifecycleError (a message for people) for an unknown account or user, a user with no
    live login in the account, or a scope that names no endpoint of this API.
    """
    require_root_account(session, account_id)
    user = session.get(User, user_id)
    if user is None:
        raise LifecycleError(f"no user with id {user_id}")
    if user.workflow_state in GONE_STATES:
        raise LifecycleError(f"user {user_id} is {user.workflow_state}")
    login = session.scalar(select(live_login(user_id, account_id)))
    if expires_at is not None and expires_at <= utcnow():
        raise LifecycleError("the token would have expired already")
    if not login:
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
        expires_at=expires_at,
    )
    session.add(token)
    session.flush()
    return token, secret


def _unauthenticated(message: str) -> ApiError:
    return ApiError(401, message, headers=WWW_AUTHENTICATE)


def authenticate(
    request: Request,
    db: DatabaseDep,
    background: BackgroundTasks,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """FastAPI dependency: the caller, or a 401 (missing or bad token, insufficient scopes).

    A token acts only while its user and the user's login in its account do: a token of a
    deleted or suspended user, or whose user has no live login in the account any more, is
    refused like an unknown one."""
    if credentials is None or not credentials.credentials:
        raise _unauthenticated("user authorization required")
    now = utcnow()
    with transaction(db.read, commit=False) as session:
        row = session.execute(
            select(ApiToken, Account.workflow_state, User.workflow_state)
            .join(Account, Account.id == ApiToken.root_account_id)
            .outerjoin(User, User.id == ApiToken.user_id)
            # The token's account must still be a root account, and never Canvas's dummy
            # account 0 (every root account's `root_account_id`).
            .where(
                ApiToken.crypted_token == hash_token(credentials.credentials),
                Account.is_root,
                real_accounts(),
                live_login(ApiToken.user_id, ApiToken.root_account_id),
            )
        ).one_or_none()
        if row is None:
            raise _unauthenticated("Invalid access token.")
        token, account_state, user_state = row
        if token.workflow_state != "active" or account_state == "deleted":
            raise _unauthenticated("Invalid access token.")
        if user_state is None or user_state in GONE_STATES:
            raise _unauthenticated("Invalid access token.")
        if token.expires_at is not None and token.expires_at <= now:
            raise _unauthenticated("Invalid access token.")
        caller = Caller(
            token_id=token.id,
            user_id=token.user_id,
            root_account_id=token.root_account_id,
            scopes=tuple(json.loads(token.scopes)) if token.scopes else None,
        )
        stale = token.last_used_at is None or token.last_used_at <= now - LAST_USED_RESOLUTION
    if stale:
        # After the answer is sent, in a write transaction of its own: the request never waits
        # for it (on SQLite a write waits for a running sweep's lock).
        background.add_task(record_use, db.write, caller.token_id, now)
    if caller.scopes is not None:
        route = request.scope.get("route")
        path = getattr(route, "path", request.url.path)
        if route_scope(request.method, path) not in caller.scopes:
            # No WWW-Authenticate: the token is good, it just may not do this.
            raise ApiError(401, "Insufficient scopes on access token.")
    return caller


def record_use(factory: sessionmaker[Session], token_id: int, now: dt.datetime) -> None:
    """Write `last_used_at`, unless another request wrote it less than a minute ago (the
    condition is in the UPDATE, so concurrent requests write it once)."""
    try:
        with transaction(factory) as session:
            session.execute(
                update(ApiToken)
                .where(
                    ApiToken.id == token_id,
                    or_(
                        ApiToken.last_used_at.is_(None),
                        ApiToken.last_used_at <= now - LAST_USED_RESOLUTION,
                    ),
                )
                # `last_used_at` alone: the token itself did not change.
                .values(last_used_at=now, updated_at=ApiToken.updated_at)
                .execution_options(synchronize_session=False)
            )
    except SQLAlchemyError as error:  # a bookkeeping write: never worth a failed request
        log.warning("could not record the use of token %s: %s", token_id, error)


def find_tokens(session: Session, which: str) -> list[ApiToken]:
    """The tokens `which` names: an id, a hint (the first characters shown) or the secret
    itself. Revoked ones are not found."""
    conditions = [ApiToken.token_hint == which, ApiToken.crypted_token == hash_token(which)]
    if which.isascii() and which.isdigit() and len(which) <= 18:
        conditions.append(ApiToken.id == int(which))
    return list(
        session.scalars(
            select(ApiToken)
            .where(or_(*conditions), ApiToken.workflow_state != REVOKED)
            .order_by(ApiToken.id)
        )
    )


def revoke_token(session: Session, which: str) -> ApiToken:
    """Revoke the one token `which` names (see :func:`find_tokens`); LifecycleError when it
    names none or several."""
    found = find_tokens(session, which)
    if not found:
        raise LifecycleError(f"no token {which!r} (give its id or its hint from `tep token list`)")
    if len(found) > 1:
        ids = ", ".join(str(token.id) for token in found)
        raise LifecycleError(f"{which!r} names tokens {ids}: give the id of the one to revoke")
    [token] = found
    token.workflow_state = REVOKED
    session.flush()
    return token


CallerDep = Annotated[Caller, Depends(authenticate)]
