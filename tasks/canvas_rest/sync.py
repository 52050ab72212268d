"""Canvas -> tep's mirror: read a hosted Canvas's REST API into Canvas's tables in tep's own
database, with Canvas's own ids, so the sweep runs on the mirror with today's rules.

What is read, per root account (each a Canvas fact, cited where it is used):

* the account (`GET /api/v1/accounts/:id`, or `self`: the token's domain root account);
* its pairings, `GET /api/v1/accounts/:id/temporary_enrollment_pairings?include_deleted=true`,
  each bare or under its root key. A Canvas release renders `null` there (its index renders
  `@temporary_enrollment_pairing.as_json`, an unset variable:
  app/controllers/temporary_enrollment_pairings_api_controller.rb); then the pairings are found
  through the users' enrollments (their `temporary_enrollment_pairing_id`), each read with
  `GET .../temporary_enrollment_pairings/:id`;
* the recipients, `GET /api/v1/accounts/:id/users?temporary_enrollment_recipients=true
  &include[]=email` (users_controller.rb `api_index`, lib/api/v1/user.rb `user_json`);
* each recipient's temporary enrollments, `GET /api/v1/users/:id/enrollments
  ?temporary_enrollments_for_recipient=true&include[]=temporary_enrollment_providers`, with no
  `state[]`: enrollments_api_controller.rb `temporary_enrollment_conditions` filters by state
  only when one is given, so leaving it out lists every state Canvas keeps (a deleted one is
  hidden by `Enrollment.temporary_enrollments_for_recipient`'s `active` scope in current
  Canvas, app/models/enrollment.rb, and listed by older releases);
* the courses, sub-accounts and pairing creators those name, once each
  (`GET /api/v1/courses/:id`, `GET /api/v1/courses/:id/sections`, `GET /api/v1/accounts/:id`,
  `GET /api/v1/users/:id`).

Incremental where Canvas allows it. None of these endpoints takes an `updated_since`, so every
sync reads the pairings and the recipients (a page per 100), and the enrollments of every user
Canvas lists as a recipient (a user with a live or pending temporary enrollment: lib/user_search.rb)
or the mirror holds a live one for (so an end Canvas made is seen even after Canvas stopped
listing the user). What is skipped: the users whose temporary enrollments have all ended on both
sides (past recipients, the bulk of a long history), and the courses, sections, sub-accounts and
creators the mirror has already. A full read (`full=True`, or when the last one is older than
:data:`FULL_SYNC_EVERY`) reads those too. Each account's sync is recorded in `CanvasSync`, with
the requests it cost and the sum of Canvas's `X-Request-Cost`.

How it is written: all of an account's reads first, then one transaction for the account's
writes, so the sweep never sees half a sync (a pairing without the enrollments Canvas ended, an
end recorded without its audit row) and no lock is held while Canvas answers. An enrollment the
mirror had live that Canvas shows ended (or no longer lists) is *ended by Canvas*: its state is
written to the mirror with an audit row (reason `ended_by_canvas`, Canvas's confirmation set) and
what Canvas's callbacks would have written; nothing is sent to Canvas. A pairing left with
nothing live is settled by the lifecycle's own rules (:func:`tasks.lifecycle.settle_pairing`:
it records the end, once Canvas has answered every command of the pairing); what an account's
first sync brings in is history and stays as Canvas shows it (`_Writer._touch`). An enrollment tep
has a command for that Canvas has not answered, or answered after this sync started reading, is
left as the mirror has it: Canvas's answer read before that is older than tep's decision.

A refused token (CanvasPermissionError) stops the sync; an item Canvas sends that cannot be read
is skipped with a warning and counted; `dry_run` reads everything, writes in a transaction it
rolls back, and reports what it would have changed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session, sessionmaker

from models import (
    DEFAULT_TERM_NAME,
    DUMMY_ROOT_ACCOUNT_ID,
    ENROLLMENT_TYPES,
    LIVE_ENROLLMENT_STATES,
    MAX_ID,
    Account,
    CanvasCommand,
    CanvasSync,
    CommunicationChannel,
    Course,
    CourseSection,
    Enrollment,
    EnrollmentTerm,
    PairingEnd,
    Role,
    StateChange,
    TemporaryEnrollmentPairing,
    User,
    transaction,
    utcnow,
)
from tasks import canvas_callbacks, deadlines, events, lifecycle
from tasks.canvas_callbacks import ids_in
from tasks.canvas_rest.client import (
    CanvasClient,
    CanvasPermissionError,
    CanvasRequestError,
    RequestCost,
)

log = logging.getLogger("tep.canvas.sync")

Pairing = TemporaryEnrollmentPairing
T = TypeVar("T")

# Canvas's largest page (Api::MAX_PER_PAGE, lib/api.rb): the fewest requests per list.
PER_PAGE = 100
# How old the last full read of an account may be before a sync reads everything again: past
# recipients (whose enrollments Canvas may still change among ended states) and the names of
# courses, sections and sub-accounts, which Canvas lets anyone rename at any time.
FULL_SYNC_EVERY = dt.timedelta(days=1)
# Why, in the audit table.
REASON_ENDED_BY_CANVAS = "ended_by_canvas"  # Canvas ended an enrollment the mirror had live
REASON_DELETED_BY_CANVAS = "deleted_by_canvas"  # a pairing deleted in Canvas
REASON_REOPENED_BY_CANVAS = "reopened_by_canvas"  # a live enrollment in a pairing tep had ended
# The warnings a summary lists (its count covers them all).
WARNINGS_KEPT = 20
# Rows per `IN (...)` when the mirror is read back (SQLite binds one parameter per id).
CHUNK = 500
# Warnings come from the reading threads too.
_WARN_LOCK = threading.Lock()

# What Canvas's course JSON shows for its internal states (lib/api/v1/course.rb: `created` and
# `claimed` are shown `unpublished`), back to a state the table holds.
COURSE_STATES_READ = {"unpublished": "claimed"}
# Every enrollment state the mirror's `enrollments.workflow_state` holds (DESIGN.md section 3).
KNOWN_ENROLLMENT_STATES = (
    *LIVE_ENROLLMENT_STATES,
    "deleted",
    "rejected",
    "completed",
    "inactive",
)
# An enrollment Canvas no longer lists was deleted: the one state its recipient listing hides.
VANISHED_STATE = "deleted"


# --------------------------------------------------------------------------------------------
# The summary


@dataclasses.dataclass
class Counts:
    new: int = 0
    changed: int = 0
    vanished: int = 0


@dataclasses.dataclass
class AccountSync:
    """What one root account's sync read and (would have) changed."""

    account_id: int
    full: bool = False
    # `list`: Canvas's pairing list; `users`: discovered through the recipients' enrollments.
    pairings_source: str = "list"
    pairings: Counts = dataclasses.field(default_factory=Counts)
    enrollments: Counts = dataclasses.field(default_factory=Counts)
    users: Counts = dataclasses.field(default_factory=Counts)
    courses: Counts = dataclasses.field(default_factory=Counts)
    sections: Counts = dataclasses.field(default_factory=Counts)
    ended_by_canvas: int = 0  # enrollments the mirror had live that Canvas had ended
    pairings_ended: int = 0  # pairings the lifecycle ended once nothing was left live
    recipients_listed: int = 0
    enrollment_reads: int = 0  # users whose enrollments were read
    enrollment_reads_skipped: int = 0  # past recipients not read (incremental)
    skipped: int = 0  # items Canvas sent that could not be read
    warnings: list[str] = dataclasses.field(default_factory=list)
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    cost: float = 0.0  # sum of Canvas's X-Request-Cost
    seconds: float = 0.0
    error: str | None = None  # a Canvas answer that stopped this account's sync

    def warn(self, message: str) -> None:
        log.warning("canvas sync, account %s: %s", self.account_id, message)
        with _WARN_LOCK:
            self.skipped += 1
            if len(self.warnings) < WARNINGS_KEPT:
                self.warnings.append(message)

    def spent(self, cost: RequestCost, seconds: float) -> None:
        self.requests, self.retries, self.throttled = cost.requests, cost.retries, cost.throttled
        self.cost, self.seconds = cost.cost, seconds

    def as_dict(self) -> dict[str, Any]:
        result = dataclasses.asdict(self)
        result["cost"] = round(self.cost, 6)
        result["seconds"] = round(self.seconds, 3)
        return result


TABLES = ("pairings", "enrollments", "users", "courses", "sections")


@dataclasses.dataclass
class SyncSummary:
    """A sync of one or more root accounts (`as_dict()` is its JSON)."""

    run_id: str
    as_of: dt.datetime
    dry_run: bool
    started_at: dt.datetime
    accounts: list[AccountSync] = dataclasses.field(default_factory=list)
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    cost: float = 0.0
    lowest_remaining: float | None = None
    seconds: float = 0.0

    def total(self, table: str) -> Counts:
        counts = [getattr(a, table) for a in self.accounts]
        return Counts(
            sum(c.new for c in counts),
            sum(c.changed for c in counts),
            sum(c.vanished for c in counts),
        )

    @property
    def ended_by_canvas(self) -> int:
        return sum(a.ended_by_canvas for a in self.accounts)

    @property
    def pairings_ended(self) -> int:
        return sum(a.pairings_ended for a in self.accounts)

    @property
    def skipped(self) -> int:
        return sum(a.skipped for a in self.accounts)

    @property
    def changes(self) -> int:
        """Rows new, changed or vanished, over every table and account."""
        return sum(c.new + c.changed + c.vanished for c in (self.total(table) for table in TABLES))

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "as_of": lifecycle.iso(self.as_of),
            "dry_run": self.dry_run,
            "started_at": lifecycle.iso(self.started_at),
            **{table: dataclasses.asdict(self.total(table)) for table in TABLES},
            "ended_by_canvas": self.ended_by_canvas,
            "pairings_ended": self.pairings_ended,
            "skipped": self.skipped,
            "requests": self.requests,
            "retries": self.retries,
            "throttled": self.throttled,
            "cost": round(self.cost, 6),
            "lowest_remaining": self.lowest_remaining,
            "seconds": round(self.seconds, 3),
            "accounts": [a.as_dict() for a in self.accounts],
        }


def _cost_since(client: CanvasClient, before: RequestCost) -> RequestCost:
    now = client.cost
    return RequestCost(
        requests=now.requests - before.requests,
        retries=now.retries - before.retries,
        throttled=now.throttled - before.throttled,
        pages=now.pages - before.pages,
        cost=now.cost - before.cost,
        seconds=now.seconds - before.seconds,
        paused=now.paused - before.paused,
        lowest_remaining=now.lowest_remaining,
    )


# --------------------------------------------------------------------------------------------
# Reading Canvas's JSON: every value checked, nothing trusted


class Malformed(ValueError):
    """An item Canvas sent that cannot be mirrored; the message says what is wrong."""


def _id(item: Mapping[str, Any], key: str, *, required: bool = True) -> int | None:
    """An id (Canvas sends numbers, or strings with `application/json+canvas-string-ids`)."""
    value = item.get(key)
    if value is None:
        if required:
            raise Malformed(f"no {key}")
        return None
    if isinstance(value, bool):
        raise Malformed(f"{key} {value!r} is not an id")
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise Malformed(f"{key} {value!r} is not an id")
    return value


def _text(item: Mapping[str, Any], key: str) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Malformed(f"{key} is not a string")
    return value[:255]


def _moment(item: Mapping[str, Any], key: str) -> dt.datetime | None:
    value = item.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Malformed(f"{key} is not a timestamp")
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Malformed(f"{key} {value[:40]!r} is not ISO 8601") from None
    if moment.tzinfo is None:
        raise Malformed(f"{key} {value[:40]!r} has no time zone")
    return moment.astimezone(dt.UTC)


def _object(item: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(item, Mapping):
        raise Malformed(f"{what} is a {type(item).__name__}, not an object")
    return item


@dataclasses.dataclass(frozen=True)
class AccountItem:
    id: int
    name: str | None
    parent_account_id: int | None
    root_account_id: int | None
    workflow_state: str
    uuid: str | None

    @classmethod
    def read(cls, raw: Any) -> AccountItem:
        item = _object(raw, "account")
        return cls(
            id=_id(item, "id") or 0,
            name=_text(item, "name"),
            parent_account_id=_id(item, "parent_account_id", required=False),
            root_account_id=_id(item, "root_account_id", required=False),
            workflow_state=_text(item, "workflow_state") or "active",
            uuid=_text(item, "uuid"),
        )


@dataclasses.dataclass(frozen=True)
class PairingItem:
    id: int
    workflow_state: str  # Canvas's: `active` or `deleted` (tep's own API also shows `ended`)
    ending_enrollment_state: str | None
    created_by_id: int | None
    deleted_by_id: int | None
    created_at: dt.datetime | None
    updated_at: dt.datetime | None

    @classmethod
    def read(cls, raw: Any) -> PairingItem:
        item = _object(raw, "pairing")
        # Canvas's `as_json` puts the object under its root key (CANVAS.md); accept it bare too.
        inner = item.get("temporary_enrollment_pairing")
        if inner is not None:
            item = _object(inner, "temporary_enrollment_pairing")
        state = _text(item, "workflow_state") or "active"
        return cls(
            id=_id(item, "id") or 0,
            # Canvas::SoftDeletable knows `active` and `deleted`; an `ended` pairing (a tep API
            # acting as Canvas) is `active` in Canvas's row, its end being tep's own record.
            workflow_state="deleted" if state == "deleted" else "active",
            ending_enrollment_state=_text(item, "ending_enrollment_state"),
            created_by_id=_id(item, "created_by_id", required=False),
            deleted_by_id=_id(item, "deleted_by_id", required=False),
            created_at=_moment(item, "created_at"),
            updated_at=_moment(item, "updated_at"),
        )


# `email` absent from a user's JSON: Canvas did not say (not asked, or not allowed to show it).
NOT_SHOWN = object()


@dataclasses.dataclass(frozen=True)
class UserItem:
    id: int
    name: str | None
    sortable_name: str | None
    created_at: dt.datetime | None
    email: Any = NOT_SHOWN  # str, None (Canvas has none) or NOT_SHOWN
    stub: bool = False  # known by id only (Canvas would not show the user)

    @classmethod
    def read(cls, raw: Any) -> UserItem:
        item = _object(raw, "user")
        email: Any = NOT_SHOWN
        if "email" in item:
            email = _text(item, "email")
        return cls(
            id=_id(item, "id") or 0,
            name=_text(item, "name"),
            sortable_name=_text(item, "sortable_name"),
            created_at=_moment(item, "created_at"),
            email=email,
        )


@dataclasses.dataclass(frozen=True)
class EnrollmentItem:
    id: int
    user_id: int
    course_id: int
    course_section_id: int
    root_account_id: int | None
    type: str
    role: str
    role_id: int
    workflow_state: str
    start_at: dt.datetime | None
    end_at: dt.datetime | None
    completed_at: Any  # a datetime, None, or NOT_SHOWN (Canvas's JSON has no completed_at)
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    associated_user_id: int | None
    limit_privileges_to_course_section: bool
    temporary_enrollment_source_user_id: int | None
    temporary_enrollment_pairing_id: int | None
    user: UserItem | None
    provider: UserItem | None

    @classmethod
    def read(cls, raw: Any) -> EnrollmentItem:
        """lib/api/v1/user.rb `enrollment_json` (API_ENROLLMENT_JSON_OPTS, `enrollment_state` =
        the workflow state, `deleted` for a deleted course or section; `role`, `role_id`;
        `temporary_enrollment_provider` with include[]=temporary_enrollment_providers)."""
        item = _object(raw, "enrollment")
        kind = _text(item, "type")
        if kind not in ENROLLMENT_TYPES:
            raise Malformed(f"type {kind!r} is not one of {', '.join(ENROLLMENT_TYPES)}")
        state = _text(item, "enrollment_state")
        if state not in KNOWN_ENROLLMENT_STATES:
            raise Malformed(f"enrollment_state {state!r} is not a state tep knows")
        limit = item.get("limit_privileges_to_course_section", False)
        completed: Any = NOT_SHOWN
        if "completed_at" in item:
            completed = _moment(item, "completed_at")
        user = item.get("user")
        provider = item.get("temporary_enrollment_provider")
        return cls(
            id=_id(item, "id") or 0,
            user_id=_id(item, "user_id") or 0,
            course_id=_id(item, "course_id") or 0,
            course_section_id=_id(item, "course_section_id") or 0,
            root_account_id=_id(item, "root_account_id", required=False),
            type=kind,
            role=_text(item, "role") or kind,
            role_id=_id(item, "role_id") or 0,
            workflow_state=state,
            start_at=_moment(item, "start_at"),
            end_at=_moment(item, "end_at"),
            completed_at=completed,
            created_at=_moment(item, "created_at"),
            updated_at=_moment(item, "updated_at"),
            associated_user_id=_id(item, "associated_user_id", required=False),
            limit_privileges_to_course_section=limit is True,
            temporary_enrollment_source_user_id=_id(
                item, "temporary_enrollment_source_user_id", required=False
            ),
            temporary_enrollment_pairing_id=_id(
                item, "temporary_enrollment_pairing_id", required=False
            ),
            user=UserItem.read(user) if isinstance(user, Mapping) else None,
            provider=UserItem.read(provider) if isinstance(provider, Mapping) else None,
        )


@dataclasses.dataclass(frozen=True)
class CourseItem:
    id: int
    name: str | None
    course_code: str | None
    account_id: int
    workflow_state: str
    start_at: dt.datetime | None
    end_at: dt.datetime | None
    created_at: dt.datetime | None

    @classmethod
    def read(cls, raw: Any) -> CourseItem:
        item = _object(raw, "course")
        state = _text(item, "workflow_state") or "claimed"
        return cls(
            id=_id(item, "id") or 0,
            name=_text(item, "name"),
            course_code=_text(item, "course_code"),
            account_id=_id(item, "account_id") or 0,
            workflow_state=COURSE_STATES_READ.get(state, state),
            start_at=_moment(item, "start_at"),
            end_at=_moment(item, "end_at"),
            created_at=_moment(item, "created_at"),
        )


@dataclasses.dataclass(frozen=True)
class SectionItem:
    id: int
    course_id: int
    name: str

    @classmethod
    def read(cls, raw: Any) -> SectionItem:
        """lib/api/v1/section.rb `section_json` (id, name, course_id, ...)."""
        item = _object(raw, "section")
        return cls(
            id=_id(item, "id") or 0,
            course_id=_id(item, "course_id") or 0,
            name=_text(item, "name") or "",
        )


# --------------------------------------------------------------------------------------------
# Reading Canvas


def _params(*pairs: tuple[str, Any], per_page: int) -> list[tuple[str, Any]]:
    return [*pairs, ("per_page", per_page)]


@dataclasses.dataclass
class Fetched:
    """Everything one account's sync read from Canvas, before anything is written."""

    account: AccountItem
    pairings: dict[int, PairingItem] = dataclasses.field(default_factory=dict)
    # Canvas's pairing list was read whole: a mirrored pairing missing from it vanished.
    pairings_complete: bool = False
    recipients: set[int] = dataclasses.field(default_factory=set)
    users: dict[int, UserItem] = dataclasses.field(default_factory=dict)
    # The temporary enrollments of each user read; a user whose listing could not be read
    # whole is not in `read_whole` (nothing of theirs is taken as vanished).
    enrollments: dict[int, EnrollmentItem] = dataclasses.field(default_factory=dict)
    users_read: set[int] = dataclasses.field(default_factory=set)
    read_whole: set[int] = dataclasses.field(default_factory=set)
    courses: dict[int, CourseItem] = dataclasses.field(default_factory=dict)
    courses_missing: set[int] = dataclasses.field(default_factory=set)
    sections: dict[int, SectionItem] = dataclasses.field(default_factory=dict)
    sections_read: set[int] = dataclasses.field(default_factory=set)  # courses whose were read
    accounts: dict[int, AccountItem] = dataclasses.field(default_factory=dict)
    pairings_missing: set[int] = dataclasses.field(default_factory=set)


@dataclasses.dataclass(frozen=True)
class MirrorState:
    """What the mirror held for the account when the sync began reading."""

    exists: bool
    first_sync: bool
    full_synced_at: dt.datetime | None
    live_users: frozenset[int]  # users with a live temporary enrollment in the mirror
    past_users: frozenset[int]  # every user with a temporary enrollment in the mirror
    open_pairings: frozenset[int]  # pairings neither deleted nor ended


class _Reader:
    """The reads of one account's sync (the client paces and retries them)."""

    def __init__(self, client: CanvasClient, result: AccountSync, per_page: int) -> None:
        self.client = client
        self.result = result
        self.per_page = per_page

    def items(
        self, path: str, params: list[tuple[str, Any]], read: Callable[[Any], T], what: str
    ) -> tuple[list[T], bool]:
        """Every item of a list that reads; (items, whether each item was read)."""
        found: list[T] = []
        whole = True
        for raw in self.client.get_all(path, params):
            try:
                found.append(read(raw))
            except Malformed as error:
                self.result.warn(f"{what}: an item skipped ({error})")
                whole = False
        return found, whole

    def one(self, path: str, read: Callable[[Any], T], what: str) -> T | None:
        """One object, or None when Canvas answers 404 (or sends something unreadable)."""
        response = self.client.get(path)
        if response.status == 404:
            return None
        if not response.ok:
            raise CanvasRequestError(
                f"Canvas answered {response.status} to GET {path}: "
                f"{response.error_message() or 'no message'}",
                status=response.status, method="GET", path=path,
            )  # fmt: skip
        try:
            return read(response.body)
        except Malformed as error:
            self.result.warn(f"{what}: skipped ({error})")
            return None

    def pairing_list(self, account_id: int) -> tuple[list[PairingItem], bool] | None:
        """The account's pairings, deleted ones too, and whether every item read; None when
        Canvas renders `null`."""
        path = f"/api/v1/accounts/{account_id}/temporary_enrollment_pairings"
        first = self.client.get(path, _params(("include_deleted", "true"), per_page=self.per_page))
        if first.status == 404:
            # Canvas answers 404 when the temporary_enrollments feature is off for the account
            # (`require_feature_flag`); the recipients' enrollments may still name pairings.
            self.result.warn("pairings: Canvas answered 404 (feature off?); reading users")
            return None
        if not first.ok:
            raise CanvasRequestError(
                f"Canvas answered {first.status} to GET {path}: "
                f"{first.error_message() or 'no message'}",
                status=first.status, method="GET", path=path,
            )  # fmt: skip
        if first.body is None:
            return None
        if not isinstance(first.body, list):
            raise CanvasRequestError(
                f"Canvas answered GET {path} with a {type(first.body).__name__}, not a list",
                status=first.status, method="GET", path=path,
            )  # fmt: skip
        found: list[PairingItem] = []
        whole = True
        raw_items: Iterable[Any] = first.body
        following = first.next_url()
        if following is not None:
            raw_items = _chain(first.body, self.client.get_all(following))
        for raw in raw_items:
            try:
                found.append(PairingItem.read(raw))
            except Malformed as error:
                self.result.warn(f"pairings: an item skipped ({error})")
                whole = False
        return found, whole

    def user_enrollments(self, user_id: int) -> tuple[list[EnrollmentItem], bool] | None:
        """The user's temporary enrollments as recipient (every state: see the module doc);
        None when Canvas no longer knows the user (404)."""
        try:
            return self.items(
                f"/api/v1/users/{user_id}/enrollments",
                _params(
                    ("temporary_enrollments_for_recipient", "true"),
                    ("include[]", "temporary_enrollment_providers"),
                    per_page=self.per_page,
                ),
                EnrollmentItem.read,
                f"enrollments of user {user_id}",
            )
        except CanvasRequestError as error:
            if error.status == 404:
                return None
            raise


def _chain(first: Iterable[Any], rest: Iterator[Any]) -> Iterator[Any]:
    yield from first
    yield from rest


def _parallel(client: CanvasClient, work: Callable[[int], T], ids: Iterable[int]) -> list[T]:
    """`work` over `ids` on as many threads as the client lets requests fly at once (its
    semaphore keeps the limit); results in `ids` order, the first error raised."""
    ordered = sorted(set(ids))
    if len(ordered) <= 1 or client.max_in_flight <= 1:
        return [work(i) for i in ordered]
    with ThreadPoolExecutor(
        max_workers=client.max_in_flight, thread_name_prefix="canvas-sync"
    ) as pool:
        futures = [pool.submit(work, i) for i in ordered]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


# --------------------------------------------------------------------------------------------
# The mirror as it is


def _in_chunks(ids: Collection[int]) -> Iterator[list[int]]:
    ordered = sorted(ids)
    for start in range(0, len(ordered), CHUNK):
        yield ordered[start : start + CHUNK]


def _existing_ids(session: Session, model: Any, ids: Collection[int]) -> set[int]:
    found: set[int] = set()
    for chunk in _in_chunks(ids):
        found.update(session.scalars(select(model.id).where(model.id.in_(chunk))))
    return found


def _load(
    session: Session, model: type[T], ids: Collection[int], *, again: bool = False
) -> dict[int, T]:
    """The rows with these ids; `again`: read from the database even if the session has them."""
    found: dict[int, T] = {}
    column: Any = model.id  # type: ignore[attr-defined]
    for chunk in _in_chunks(ids):
        stmt = select(model).where(column.in_(chunk))
        if again:
            stmt = stmt.execution_options(populate_existing=True)
        for row in session.scalars(stmt):
            found[row.id] = row  # type: ignore[attr-defined]
    return found


def _mirror_state(factory: sessionmaker[Session], account_id: int) -> MirrorState:
    with transaction(factory, commit=False) as session:
        exists_ = session.get(Account, account_id) is not None
        synced = session.get(CanvasSync, account_id)
        first_sync = synced is None
        full_synced_at = synced.full_synced_at if synced is not None else None
        temporary = Enrollment.temporary_enrollment_source_user_id.is_not(None)
        in_account = Enrollment.root_account_id == account_id
        live_users = frozenset(
            session.scalars(
                select(Enrollment.user_id)
                .where(in_account, temporary, Enrollment.workflow_state.in_(LIVE_ENROLLMENT_STATES))
                .distinct()
            )
        )
        past_users = frozenset(
            session.scalars(select(Enrollment.user_id).where(in_account, temporary).distinct())
        )
        open_pairings = frozenset(
            session.scalars(
                select(Pairing.id).where(
                    Pairing.root_account_id == account_id,
                    Pairing.workflow_state != "deleted",
                    ~exists().where(PairingEnd.temporary_enrollment_pairing_id == Pairing.id),
                )
            )
        )
    return MirrorState(
        exists=exists_,
        first_sync=first_sync,
        full_synced_at=full_synced_at,
        live_users=live_users,
        past_users=past_users,
        open_pairings=open_pairings,
    )


def _full_read(mirror: MirrorState, full: bool | None, as_of: dt.datetime) -> bool:
    if full is not None:
        return full
    return mirror.full_synced_at is None or as_of - mirror.full_synced_at >= FULL_SYNC_EVERY


# --------------------------------------------------------------------------------------------
# The sync


def sync_canvas(
    factory: sessionmaker[Session],
    client: CanvasClient,
    *,
    account_ids: list[int] | None = None,
    dry_run: bool = False,
    full: bool | None = None,
    as_of: dt.datetime | None = None,
    per_page: int = PER_PAGE,
) -> SyncSummary:
    """Bring tep's mirror up to what Canvas holds for these root accounts (default: the token's
    own, `accounts/self`). `full`: True reads everything, False only what changes, None decides
    by the age of the last full read. Returns what was read and changed (or, with `dry_run`,
    would have been)."""
    started_at = utcnow()
    as_of = lifecycle.require_aware(as_of) if as_of is not None else started_at
    clock = time.monotonic()
    before = dataclasses.replace(client.cost)
    summary = SyncSummary(
        run_id=lifecycle.new_run_id(), as_of=as_of, dry_run=dry_run, started_at=started_at
    )
    targets: list[int | str] = list(account_ids) if account_ids else ["self"]
    for target in targets:
        summary.accounts.append(
            _sync_account(factory, client, target, summary, full=full, per_page=per_page)
        )
    spent = _cost_since(client, before)
    summary.requests, summary.retries, summary.throttled = (
        spent.requests,
        spent.retries,
        spent.throttled,
    )
    summary.cost, summary.lowest_remaining = spent.cost, spent.lowest_remaining
    summary.seconds = time.monotonic() - clock
    log.info(
        "canvas sync %s%s: %d accounts, %d changes (%d ended by Canvas), %d requests, cost %.3f",
        summary.run_id,
        " (dry run)" if dry_run else "",
        len(summary.accounts),
        summary.changes,
        summary.ended_by_canvas,
        summary.requests,
        summary.cost,
    )
    return summary


def _sync_account(
    factory: sessionmaker[Session],
    client: CanvasClient,
    target: int | str,
    summary: SyncSummary,
    *,
    full: bool | None,
    per_page: int,
) -> AccountSync:
    clock = time.monotonic()
    before = dataclasses.replace(client.cost)
    result = AccountSync(account_id=target if isinstance(target, int) else 0)
    reader = _Reader(client, result, per_page)
    read_started = utcnow()
    try:
        account = reader.one(f"/api/v1/accounts/{target}", AccountItem.read, "account")
        if account is None:
            raise lifecycle.UnknownAccount(
                f"Canvas has no account {target} this token can see "
                f"(GET /api/v1/accounts/{target} answered 404)"
            )
        if account.root_account_id is not None or account.parent_account_id is not None:
            raise lifecycle.UnknownAccount(
                f"Canvas account {account.id} is a sub-account; give its root account "
                f"{account.root_account_id or account.parent_account_id}"
            )
        result.account_id = account.id
        mirror = _mirror_state(factory, account.id)
        result.full = _full_read(mirror, full, summary.as_of)
        fetched = _fetch(reader, factory, account, mirror, result)
        # Every request is made by now: the record written below carries what they cost.
        result.spent(_cost_since(client, before), time.monotonic() - clock)
        with transaction(factory, commit=not summary.dry_run) as session:
            _Writer(session, fetched, mirror, result, summary, read_started).write()
    except CanvasRequestError as error:
        # An answer this sync cannot use (a list that is not a list, an error status): this
        # account is left as the mirror has it; the others go on.
        result.error = str(error)
        log.error("canvas sync, account %s stopped: %s", result.account_id, error)
    finally:
        result.spent(_cost_since(client, before), time.monotonic() - clock)
    return result


def _fetch(
    reader: _Reader,
    factory: sessionmaker[Session],
    account: AccountItem,
    mirror: MirrorState,
    result: AccountSync,
) -> Fetched:
    fetched = Fetched(account=account)
    client = reader.client
    listed = reader.pairing_list(account.id)
    if listed is None:
        result.pairings_source = "users"
    else:
        fetched.pairings = {p.id: p for p in listed[0]}
        fetched.pairings_complete = listed[1]

    recipients, _whole = reader.items(
        f"/api/v1/accounts/{account.id}/users",
        _params(
            ("temporary_enrollment_recipients", "true"),
            ("include[]", "email"),
            per_page=reader.per_page,
        ),
        UserItem.read,
        "recipients",
    )
    for user in recipients:
        fetched.users[user.id] = user
        fetched.recipients.add(user.id)
    result.recipients_listed = len(fetched.recipients)

    # Whose enrollments to read (the module doc): every recipient Canvas lists, every user the
    # mirror holds live, and on a full read every user the mirror has ever held.
    to_read = set(fetched.recipients) | mirror.live_users
    if result.full:
        to_read |= mirror.past_users
    result.enrollment_reads = len(to_read)
    result.enrollment_reads_skipped = len(mirror.past_users - to_read)
    for user_id, listing in zip(
        sorted(to_read), _parallel(client, reader.user_enrollments, to_read), strict=True
    ):
        fetched.users_read.add(user_id)
        if listing is None:  # Canvas no longer knows the user: nothing of theirs is live
            fetched.read_whole.add(user_id)
            continue
        items, whole = listing
        if whole:
            fetched.read_whole.add(user_id)
        for enrollment in items:
            if enrollment.user_id != user_id:
                result.warn(f"enrollment {enrollment.id}: listed for user {user_id}, skipped")
                continue
            if enrollment.root_account_id not in (None, account.id):
                continue  # another root account's (a cross-shard user): not this sync's
            fetched.enrollments[enrollment.id] = enrollment
            for person in (enrollment.user, enrollment.provider):
                if person is not None:
                    fetched.users.setdefault(person.id, person)

    _fetch_pairings(reader, fetched, mirror, discover=listed is None)
    _fetch_details(reader, factory, fetched, result)
    return fetched


def _fetch_pairings(
    reader: _Reader, fetched: Fetched, mirror: MirrorState, *, discover: bool
) -> None:
    """Read by id each pairing the enrollments name that the list did not have (a pairing made
    since the list was read), or, with no list, each one named and each open one mirrored."""
    named = {
        e.temporary_enrollment_pairing_id
        for e in fetched.enrollments.values()
        if e.temporary_enrollment_pairing_id is not None
    }
    wanted = named - set(fetched.pairings)
    if discover:
        wanted |= mirror.open_pairings
    path = f"/api/v1/accounts/{fetched.account.id}/temporary_enrollment_pairings"

    def read(pairing_id: int) -> PairingItem | None:
        return reader.one(f"{path}/{pairing_id}", PairingItem.read, f"pairing {pairing_id}")

    for pairing_id, pairing in zip(
        sorted(wanted), _parallel(reader.client, read, wanted), strict=True
    ):
        if pairing is None:
            fetched.pairings_missing.add(pairing_id)
        else:
            fetched.pairings[pairing.id] = pairing


def _fetch_details(
    reader: _Reader, factory: sessionmaker[Session], fetched: Fetched, result: AccountSync
) -> None:
    """The courses, sections, sub-accounts and pairing creators the mirror lacks (all the
    courses named, on a full read)."""
    client = reader.client
    course_ids = {e.course_id for e in fetched.enrollments.values()}
    section_courses = {e.course_section_id: e.course_id for e in fetched.enrollments.values()}
    with transaction(factory, commit=False) as session:
        known_courses = _existing_ids(session, Course, course_ids)
        known_sections = _existing_ids(session, CourseSection, section_courses)
        people = {
            person
            for p in fetched.pairings.values()
            for person in (p.created_by_id, p.deleted_by_id)
            if person is not None
        } | {
            person
            for e in fetched.enrollments.values()
            for person in (e.temporary_enrollment_source_user_id, e.associated_user_id)
            if person is not None
        }
        known_people = _existing_ids(session, User, people - set(fetched.users))
    wanted_courses = course_ids if result.full else course_ids - known_courses
    # A section the mirror lacks in a course it has (one added in Canvas since): the course's
    # sections are read again, not the course.
    sections_only = {
        section_courses[s] for s in set(section_courses) - known_sections
    } - wanted_courses

    def course(course_id: int) -> tuple[CourseItem | None, list[SectionItem]]:
        found = None
        if course_id in wanted_courses:
            found = reader.one(
                f"/api/v1/courses/{course_id}", CourseItem.read, f"course {course_id}"
            )
            if found is None:
                return None, []
        try:
            sections, _whole = reader.items(
                f"/api/v1/courses/{course_id}/sections",
                _params(per_page=reader.per_page),
                SectionItem.read,
                f"sections of course {course_id}",
            )
        except CanvasRequestError as error:
            if error.status != 404:
                raise
            sections = []
        return found, sections

    reads = wanted_courses | sections_only
    for course_id, (found, sections) in zip(
        sorted(reads), _parallel(client, course, reads), strict=True
    ):
        if found is not None:
            fetched.courses[course_id] = found
        elif course_id in wanted_courses:
            fetched.courses_missing.add(course_id)
            continue
        fetched.sections_read.add(course_id)
        for section in sections:
            fetched.sections[section.id] = section

    # Sub-accounts the courses are in, up to the root (GET /api/v1/accounts/:id).
    with transaction(factory, commit=False) as session:
        pending = {c.account_id for c in fetched.courses.values()} - {fetched.account.id}
        pending -= set() if result.full else _existing_ids(session, Account, pending)
    while pending:
        account_id = pending.pop()
        found_account = reader.one(
            f"/api/v1/accounts/{account_id}", AccountItem.read, f"account {account_id}"
        )
        if found_account is None:
            continue
        fetched.accounts[account_id] = found_account
        parent = found_account.parent_account_id
        if parent is not None and parent != fetched.account.id and parent not in fetched.accounts:
            with transaction(factory, commit=False) as session:
                if result.full or session.get(Account, parent) is None:
                    pending.add(parent)

    # The people the mirror does not have yet: providers come with their enrollments; pairing
    # creators are read once each (users_controller.rb `api_show`, which shows `email`).
    unknown = people - set(fetched.users) - known_people

    def person(user_id: int) -> UserItem | None:
        try:
            return reader.one(f"/api/v1/users/{user_id}", UserItem.read, f"user {user_id}")
        except CanvasPermissionError:
            # A person this token may not look at (a site admin who made a pairing, say): known
            # by id only. Not a refusal of the sync: the token's own reads above went through.
            return None

    for user_id, found_user in zip(
        sorted(unknown), _parallel(client, person, unknown), strict=True
    ):
        fetched.users[user_id] = found_user or UserItem(
            id=user_id, name=None, sortable_name=None, created_at=None, stub=True
        )


# --------------------------------------------------------------------------------------------
# Writing the mirror


def _differs(row: Any, values: Mapping[str, Any]) -> bool:
    return any(getattr(row, key) != value for key, value in values.items())


def _assign(row: Any, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if getattr(row, key) != value:
            setattr(row, key, value)


class _Writer:
    """One account's writes, in the caller's transaction."""

    def __init__(
        self,
        session: Session,
        fetched: Fetched,
        mirror: MirrorState,
        result: AccountSync,
        summary: SyncSummary,
        read_started: dt.datetime,
    ) -> None:
        self.session = session
        self.fetched = fetched
        self.mirror = mirror
        self.result = result
        self.summary = summary
        self.read_started = read_started
        self.root = fetched.account.id
        self.now = utcnow()
        self.touched_pairings: set[int] = set()
        self.changed_enrollments: set[int] = set()
        self.mirrored: dict[int, Enrollment] = {}

    def write(self) -> None:
        canvas_callbacks.allow_bulk_writes(self.session)
        self._load_enrollments()
        self._lock_pairings()
        # Read again under the locks (a pairing's enrollments change only under its lock):
        # what tep decided meanwhile is what counts.
        self._load_enrollments(again=True)
        term_id = self._root_account()
        self._accounts()
        self._users()
        self._courses(term_id)
        self._sections()
        self._roles()
        self._pairings()
        self._enrollments()
        self._settle()
        self._record()

    # ---- accounts

    def _root_account(self) -> int:
        """The root account, with Canvas's id, made as Canvas makes a root account
        (tasks/canvas_objects.create_root_account: `root_account_id` 0 and a default term);
        its roles are Canvas's own, mirrored with their ids as enrollments name them."""
        item = self.fetched.account
        values = {"name": item.name, "workflow_state": item.workflow_state}
        account = self.session.get(Account, item.id)
        if account is None:
            account = Account(
                id=item.id,
                root_account_id=DUMMY_ROOT_ACCOUNT_ID,
                parent_account_id=None,
                uuid=item.uuid,
                **values,
            )
            self.session.add(account)
            self.session.flush()
        else:
            _assign(account, values)
        term_id = self.session.scalar(
            select(EnrollmentTerm.id)
            .where(EnrollmentTerm.root_account_id == item.id)
            .order_by(EnrollmentTerm.id)
            .limit(1)
        )
        if term_id is None:
            # Courses need a term (`courses.enrollment_term_id` NOT NULL); Canvas's course JSON
            # names its term, which tep does not read, so the mirror's courses share this one.
            term = EnrollmentTerm(root_account_id=item.id, name=DEFAULT_TERM_NAME)
            self.session.add(term)
            self.session.flush()
            term_id = term.id
        return term_id

    def _accounts(self) -> None:
        """Sub-accounts, parents first (`accounts.parent_account_id` references accounts)."""
        items = self.fetched.accounts
        existing = _load(self.session, Account, items)
        done: set[int] = set()

        def place(account_id: int) -> None:
            if account_id in done or account_id not in items:
                return
            done.add(account_id)
            item = items[account_id]
            parent = item.parent_account_id
            if parent is not None:
                place(parent)
                if self.session.get(Account, parent) is None:
                    parent = self.root
            values = {
                "name": item.name,
                "workflow_state": item.workflow_state,
                "parent_account_id": parent or self.root,
                "root_account_id": self.root,
            }
            row = existing.get(account_id)
            if row is None:
                self.session.add(Account(id=account_id, uuid=item.uuid, **values))
            else:
                _assign(row, values)
            self.session.flush()

        for account_id in sorted(items):
            place(account_id)

    def _account_for(self, account_id: int) -> int:
        """A course's account as the mirror has it (the root account if Canvas would not say)."""
        if account_id == self.root or self.session.get(Account, account_id) is not None:
            return account_id
        return self.root

    # ---- users and their e-mail

    def _users(self) -> None:
        items = self.fetched.users
        existing = _load(self.session, User, items)
        counts = self.result.users
        changed: set[int] = set()
        for user_id in sorted(items):
            item = items[user_id]
            row = existing.get(user_id)
            if row is None:
                self.session.add(
                    User(
                        id=user_id,
                        name=item.name,
                        sortable_name=item.sortable_name,
                        workflow_state="registered",
                        created_at=item.created_at or self.now,
                    )
                )
                counts.new += 1
            elif not item.stub:
                values = {"name": item.name, "sortable_name": item.sortable_name}
                if _differs(row, values):
                    _assign(row, values)
                    changed.add(user_id)
        self.session.flush()
        emails = {u: i.email for u, i in items.items() if i.email is not NOT_SHOWN}
        changed |= self._emails(emails) & set(existing)
        counts.changed += len(changed)

    def _emails(self, emails: Mapping[int, str | None]) -> set[int]:
        """Each user's e-mail channel as Canvas's `User#email` shows it (lib/api/v1/user.rb:
        the first channel that is not retired): kept active, the others of the user retired.
        Canvas's user JSON carries no channel id, so the mirror's channels have tep's ids.
        Returns the users whose channels changed."""
        if not emails:
            return set()
        channels: dict[int, list[CommunicationChannel]] = {}
        for chunk in _in_chunks(emails):
            for channel in self.session.scalars(
                select(CommunicationChannel)
                .where(
                    CommunicationChannel.user_id.in_(chunk),
                    CommunicationChannel.path_type == "email",
                )
                .order_by(CommunicationChannel.id)
            ):
                channels.setdefault(channel.user_id, []).append(channel)
        changed: set[int] = set()
        for user_id, address in emails.items():
            mine = channels.get(user_id, [])
            keep = next((c for c in mine if c.path == address), None) if address else None
            if address and keep is None:
                keep = CommunicationChannel(user_id=user_id, path=address, path_type="email")
                self.session.add(keep)
                changed.add(user_id)
            for channel in mine:
                wanted = "active" if channel is keep else "retired"
                if channel.workflow_state != wanted and (
                    wanted == "active" or channel.workflow_state == "active"
                ):
                    channel.workflow_state = wanted
                    changed.add(user_id)
        self.session.flush()
        return changed

    # ---- courses and sections

    def _courses(self, term_id: int) -> None:
        fetched = self.fetched
        needed = {e.course_id for e in fetched.enrollments.values()}
        existing = _load(self.session, Course, needed)
        counts = self.result.courses
        for course_id in sorted(needed):
            item = fetched.courses.get(course_id)
            row = existing.get(course_id)
            if item is None:
                if row is not None and course_id in fetched.courses_missing:
                    if row.workflow_state != "deleted":  # Canvas no longer shows it
                        row.workflow_state = "deleted"
                        counts.changed += 1
                elif row is None:
                    # Canvas would not show it (deleted, say): known by id, so that its
                    # enrollments can be mirrored; Canvas shows those enrollments deleted.
                    self.session.add(
                        Course(
                            id=course_id,
                            name=None,
                            account_id=self.root,
                            root_account_id=self.root,
                            enrollment_term_id=term_id,
                            workflow_state="deleted",
                        )
                    )
                    counts.new += 1
                continue
            values = {
                "name": item.name,
                "course_code": item.course_code,
                "account_id": self._account_for(item.account_id),
                "workflow_state": item.workflow_state,
                "start_at": item.start_at,
                "conclude_at": item.end_at,
            }
            if row is None:
                self.session.add(
                    Course(
                        id=course_id,
                        root_account_id=self.root,
                        enrollment_term_id=term_id,
                        created_at=item.created_at or self.now,
                        **values,
                    )
                )
                counts.new += 1
            elif _differs(row, values):
                _assign(row, values)
                counts.changed += 1
        self.session.flush()

    def _sections(self) -> None:
        fetched = self.fetched
        listed = {
            s.id: s for s in fetched.sections.values() if s.course_id in fetched.sections_read
        }
        needed = {e.course_section_id: e.course_id for e in fetched.enrollments.values()}
        existing = _load(self.session, CourseSection, set(listed) | set(needed))
        counts = self.result.sections
        for section_id in sorted(set(listed) | set(needed)):
            item = listed.get(section_id)
            row = existing.get(section_id)
            if item is None:
                if row is None:
                    # Not among the course's sections Canvas lists (`active_course_sections`):
                    # a deleted section, named like its course as Canvas names a default one.
                    course = self.session.get(Course, needed[section_id])
                    self.session.add(
                        CourseSection(
                            id=section_id,
                            course_id=needed[section_id],
                            root_account_id=self.root,
                            name=(course.name if course is not None else None) or "",
                            workflow_state="deleted",
                        )
                    )
                    counts.new += 1
                continue
            values = {"name": item.name, "course_id": item.course_id, "workflow_state": "active"}
            if row is None:
                self.session.add(CourseSection(id=section_id, root_account_id=self.root, **values))
                counts.new += 1
            elif _differs(row, values):
                _assign(row, values)
                counts.changed += 1
        self.session.flush()

    def _roles(self) -> None:
        """The roles the enrollments name, with Canvas's ids: a role named like its base type is
        Canvas's built-in one (`Role.get_built_in_role`, app/models/role.rb), any other a
        custom role. Canvas's ids, not tep's own built-in rows, so that a restore re-enrolls
        with the role Canvas knows."""
        seen: dict[int, EnrollmentItem] = {}
        for enrollment in self.fetched.enrollments.values():
            seen.setdefault(enrollment.role_id, enrollment)
        existing = _load(self.session, Role, seen)
        for role_id in sorted(seen):
            item = seen[role_id]
            values = {"name": item.role, "base_role_type": item.type}
            row = existing.get(role_id)
            if row is None:
                self.session.add(
                    Role(
                        id=role_id,
                        account_id=None,
                        root_account_id=self.root,
                        workflow_state="built_in" if item.role == item.type else "active",
                        **values,
                    )
                )
            else:
                _assign(row, values)
        self.session.flush()

    # ---- pairings

    def _pairings(self) -> None:
        fetched = self.fetched
        items = dict(fetched.pairings)
        ids = set(items) | fetched.pairings_missing
        if fetched.pairings_complete:
            ids |= self.mirror.open_pairings
        ids |= {
            e.temporary_enrollment_pairing_id
            for e in fetched.enrollments.values()
            if e.temporary_enrollment_pairing_id is not None
        }
        existing = _load(self.session, Pairing, ids)
        counts = self.result.pairings
        for pairing_id in sorted(ids):
            item = items.get(pairing_id)
            row = existing.get(pairing_id)
            if item is None:
                # Not in Canvas's whole list, or 404 by id: gone from Canvas. Kept, deleted.
                if row is not None:
                    if row.workflow_state != "deleted":
                        self._deleted_in_canvas(row, None)
                        counts.vanished += 1
                else:
                    self.session.add(
                        Pairing(
                            id=pairing_id,
                            root_account_id=self.root,
                            workflow_state="deleted",
                            created_at=self.now,
                            updated_at=self.now,
                        )
                    )
                    counts.new += 1
                continue
            values = {
                "ending_enrollment_state": item.ending_enrollment_state,
                "created_by_id": item.created_by_id,
                "deleted_by_id": item.deleted_by_id,
                "created_at": item.created_at or (row.created_at if row else self.now),
                "updated_at": item.updated_at or (row.updated_at if row else self.now),
            }
            if row is None:
                pairing = Pairing(
                    id=pairing_id,
                    root_account_id=self.root,
                    workflow_state=item.workflow_state,
                    **values,
                )
                self.session.add(pairing)
                self.session.flush()
                counts.new += 1
                self._touch(pairing_id, new=True)
                if item.workflow_state != "deleted" and not self.mirror.first_sync:
                    # Made in Canvas since the last sync: the `pairing.created` tep's API would
                    # have recorded. (The first sync imports history, which is no news.)
                    events.record_pairing_created(self.session, pairing, run_id=self.summary.run_id)
                continue
            changed = _differs(row, values)
            _assign(row, values)
            if item.workflow_state == "deleted" and row.workflow_state != "deleted":
                self._deleted_in_canvas(row, item.deleted_by_id)
                changed = True
            elif item.workflow_state != row.workflow_state:
                row.workflow_state = item.workflow_state
                changed = True
            if changed:
                counts.changed += 1
        self.session.flush()

    def _pairings_in_play(self) -> set[int]:
        fetched = self.fetched
        ids = set(fetched.pairings) | fetched.pairings_missing
        if fetched.pairings_complete:
            ids |= self.mirror.open_pairings
        for pairing_id in (
            *(e.temporary_enrollment_pairing_id for e in fetched.enrollments.values()),
            *(e.temporary_enrollment_pairing_id for e in self.mirrored.values()),
        ):
            if pairing_id is not None:
                ids.add(pairing_id)
        return ids

    def _lock_pairings(self) -> None:
        """The row locks of every pairing this sync may write to or under, in one statement in
        id order (the order every writer takes them in), before anything is written: a sweep
        batch holding one finishes first, and no other writer can wait on this one in a
        cycle."""
        pairing_ids = self._pairings_in_play()
        if pairing_ids and self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(
                select(Pairing.id)
                .where(ids_in(self.session, Pairing.id, pairing_ids))
                .order_by(Pairing.id)
                .with_for_update()
            ).all()

    def _deleted_in_canvas(self, row: Pairing, deleted_by_id: int | None) -> None:
        """A pairing deleted in Canvas (its DELETE only marks the row: the enrollments keep
        their access, CANVAS.md): mirrored deleted, audited, and no longer in tep's deadline
        index, as a pairing deleted through tep's API is."""
        shown = lifecycle.pairing_state(self.session, row)
        self.session.add(
            StateChange(
                context_type=lifecycle.PAIRING,
                context_id=row.id,
                temporary_enrollment_pairing_id=row.id,
                root_account_id=row.root_account_id,
                from_state=shown,
                to_state="deleted",
                reason=REASON_DELETED_BY_CANVAS,
                run_id=self.summary.run_id,
                actor_id=deleted_by_id,
                created_at=self.now,
                canvas_confirmed_at=self.now,
            )
        )
        row.workflow_state = "deleted"
        if deleted_by_id is not None:
            row.deleted_by_id = deleted_by_id
        self.session.flush()
        deadlines.forget_pairings(self.session, [row.id])

    # ---- enrollments

    def _awaiting_canvas(self, enrollment_ids: Collection[int]) -> set[int]:
        """Enrollments with a tep command Canvas has not answered, or answered after this sync
        began reading: Canvas's state read before is older than tep's decision (module doc)."""
        found: set[int] = set()
        for chunk in _in_chunks(enrollment_ids):
            found.update(
                self.session.scalars(
                    select(CanvasCommand.enrollment_id).where(
                        CanvasCommand.enrollment_id.in_(chunk),
                        or_(
                            CanvasCommand.finished_at.is_(None),
                            CanvasCommand.finished_at >= self.read_started,
                        ),
                    )
                )
            )
        return found

    def _enrollment_values(self, item: EnrollmentItem, row: Enrollment | None) -> dict[str, Any]:
        values: dict[str, Any] = {
            "user_id": item.user_id,
            "course_id": item.course_id,
            "course_section_id": item.course_section_id,
            "root_account_id": self.root,
            "type": item.type,
            "role_id": item.role_id,
            "workflow_state": item.workflow_state,
            "start_at": item.start_at,
            "end_at": item.end_at,
            "associated_user_id": item.associated_user_id,
            "limit_privileges_to_course_section": item.limit_privileges_to_course_section,
            "temporary_enrollment_source_user_id": item.temporary_enrollment_source_user_id,
            "temporary_enrollment_pairing_id": item.temporary_enrollment_pairing_id,
            "created_at": item.created_at or (row.created_at if row else self.now),
            "updated_at": item.updated_at or (row.updated_at if row else self.now),
        }
        if item.completed_at is not NOT_SHOWN:
            values["completed_at"] = item.completed_at
        elif item.workflow_state == "completed" and (row is None or row.completed_at is None):
            # Canvas's JSON has no completed_at; Canvas's conclude sets it to the moment
            # (Enrollment#conclude), which this sync is the first to see.
            values["completed_at"] = self.now
        return values

    def _load_enrollments(self, *, again: bool = False) -> None:
        """The mirror's rows of the enrollments Canvas listed, and every temporary enrollment of
        the users read whole (those Canvas no longer lists have vanished)."""
        fetched = self.fetched
        self.mirrored = _load(self.session, Enrollment, fetched.enrollments, again=again)
        for chunk in _in_chunks(fetched.read_whole):
            stmt = select(Enrollment).where(
                Enrollment.user_id.in_(chunk),
                Enrollment.root_account_id == self.root,
                Enrollment.temporary_enrollment_source_user_id.is_not(None),
            )
            if again:
                stmt = stmt.execution_options(populate_existing=True)
            for held in self.session.scalars(stmt):
                self.mirrored[held.id] = held

    def _enrollments(self) -> None:
        fetched = self.fetched
        items = fetched.enrollments
        mirrored = self.mirrored
        awaiting = self._awaiting_canvas(mirrored)
        counts = self.result.enrollments
        for enrollment_id in sorted(set(items) | set(mirrored)):
            if enrollment_id in awaiting:
                continue
            item = items.get(enrollment_id)
            row = mirrored.get(enrollment_id)
            if item is None:
                assert row is not None
                if row.user_id not in fetched.read_whole or row.workflow_state == VANISHED_STATE:
                    continue
                counts.vanished += 1
                self._change_state(row, VANISHED_STATE)
                continue
            values = self._enrollment_values(item, row)
            if row is None:
                self.session.add(Enrollment(id=enrollment_id, uuid=None, **values))
                counts.new += 1
                self.changed_enrollments.add(enrollment_id)
                self._touch(item.temporary_enrollment_pairing_id, new=True)
                continue
            if not _differs(row, values):
                continue
            counts.changed += 1
            state = values.pop("workflow_state")
            _assign(row, values)
            self._change_state(row, state)
        self.session.flush()
        if self.changed_enrollments:
            self._reopen_pairings()
            canvas_callbacks.sync_enrollments(
                self.session, self.changed_enrollments, self.summary.as_of, self.now
            )
            deadlines.track(self.session, self.changed_enrollments)

    def _change_state(self, row: Enrollment, state: str) -> None:
        """Canvas's state for a mirrored enrollment; ending one the mirror had live is audited
        as ended by Canvas (with Canvas's confirmation: it is Canvas's own state)."""
        self.changed_enrollments.add(row.id)
        self._touch(row.temporary_enrollment_pairing_id)
        if row.workflow_state == state:
            return
        if row.workflow_state in LIVE_ENROLLMENT_STATES and state not in LIVE_ENROLLMENT_STATES:
            self.result.ended_by_canvas += 1
            self.session.add(
                StateChange(
                    context_type=lifecycle.ENROLLMENT,
                    context_id=row.id,
                    temporary_enrollment_pairing_id=row.temporary_enrollment_pairing_id,
                    root_account_id=row.root_account_id,
                    from_state=row.workflow_state,
                    to_state=state,
                    reason=REASON_ENDED_BY_CANVAS,
                    run_id=self.summary.run_id,
                    actor_id=None,
                    created_at=self.now,
                    canvas_confirmed_at=self.now,
                )
            )
            if state == "completed" and row.completed_at is None:
                row.completed_at = self.now
        row.workflow_state = state

    def _reopen_pairings(self) -> None:
        """A pairing tep had ended that Canvas shows a live enrollment in again (reactivated or
        added in Canvas) is open again, as tep's own reactivate reopens one
        (api/routes/enrollments.py `_reopen`): its end goes, audited, so the sweep ends the
        enrollment at its `end_at`."""
        live_pairings = {
            pairing_id
            for pairing_id in self.session.scalars(
                select(Enrollment.temporary_enrollment_pairing_id)
                .where(
                    ids_in(self.session, Enrollment.id, self.changed_enrollments),
                    Enrollment.workflow_state.in_(LIVE_ENROLLMENT_STATES),
                    Enrollment.temporary_enrollment_pairing_id.is_not(None),
                )
                .distinct()
            )
            if pairing_id is not None
        }
        for end in _load_ends(self.session, live_pairings):
            pairing = self.session.get(Pairing, end.temporary_enrollment_pairing_id)
            if pairing is None or pairing.workflow_state == "deleted":
                continue
            self.session.add(
                StateChange(
                    context_type=lifecycle.PAIRING,
                    context_id=pairing.id,
                    temporary_enrollment_pairing_id=pairing.id,
                    root_account_id=pairing.root_account_id,
                    from_state="ended",
                    to_state="active",
                    reason=REASON_REOPENED_BY_CANVAS,
                    run_id=self.summary.run_id,
                    actor_id=None,
                    created_at=self.now,
                    canvas_confirmed_at=self.now,
                )
            )
            self.session.delete(end)
        self.session.flush()

    # ---- pairings left with nothing live, and the record

    def _touch(self, pairing_id: int | None, *, new: bool = False) -> None:
        """A pairing to settle if this sync leaves it with nothing live. Not what the first sync
        of an account brings in new: that is history (pairings Canvas never leaves `active`,
        whose enrollments ended before tep was there), and ending them now would announce years
        of ends at once (an `ended` notice is planned for each end audited in the last day,
        tasks/notices.py); such a pairing stays as Canvas shows it, as on a Canvas database
        tep is installed beside (`existing` mode)."""
        if pairing_id is not None and not (new and self.mirror.first_sync):
            self.touched_pairings.add(pairing_id)

    def _settle(self) -> None:
        """Pairings this sync touched that are open, have enrollments and nothing live: no
        deadline row leads the sweep to them any more, so the lifecycle's rule is applied here
        (:func:`tasks.lifecycle.settle_pairing`: it records the end, or leaves it until Canvas
        has answered every command of the pairing). Pairings with live enrollments left are the
        sweep's, through the deadline index."""
        if not self.touched_pairings:
            return
        has_enrollments = exists().where(Enrollment.temporary_enrollment_pairing_id == Pairing.id)
        still_live = exists().where(
            Enrollment.temporary_enrollment_pairing_id == Pairing.id,
            Enrollment.workflow_state.in_(LIVE_ENROLLMENT_STATES),
        )
        ended = exists().where(PairingEnd.temporary_enrollment_pairing_id == Pairing.id)
        candidates = list(
            self.session.scalars(
                select(Pairing.id)
                .where(
                    ids_in(self.session, Pairing.id, self.touched_pairings),
                    Pairing.workflow_state != "deleted",
                    has_enrollments,
                    ~still_live,
                    ~ended,
                )
                .order_by(Pairing.id)
            )
        )
        for pairing_id in candidates:
            lifecycle.settle_pairing(
                self.session, pairing_id, as_of=self.summary.as_of, run_id=self.summary.run_id
            )
        if candidates:
            self.result.pairings_ended += len(
                list(
                    self.session.scalars(
                        select(PairingEnd.temporary_enrollment_pairing_id).where(
                            ids_in(
                                self.session, PairingEnd.temporary_enrollment_pairing_id, candidates
                            )
                        )
                    )
                )
            )

    def _record(self) -> None:
        row = self.session.get(CanvasSync, self.root)
        full_at = self.summary.as_of if self.result.full else None
        text = json.dumps(self.result.as_dict())
        if row is None:
            self.session.add(
                CanvasSync(
                    root_account_id=self.root,
                    synced_at=self.summary.as_of,
                    full_synced_at=full_at,
                    summary=text,
                )
            )
        else:
            row.synced_at = self.summary.as_of
            row.full_synced_at = full_at or row.full_synced_at
            row.summary = text
        self.session.flush()


def _load_ends(session: Session, pairing_ids: Collection[int]) -> list[PairingEnd]:
    found: list[PairingEnd] = []
    for chunk in _in_chunks(pairing_ids):
        found += session.scalars(
            select(PairingEnd).where(PairingEnd.temporary_enrollment_pairing_id.in_(chunk))
        )
    return found
