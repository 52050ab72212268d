"""`tep canvas check`: whether tep can work beside this Canvas with this token, one line a finding.

What is checked, in order (a problem stops what depends on it):

* the URL answers as Canvas does and the token works: `GET /api/v1/users/self`
  (users_controller.rb `api_show`; anyone may see themselves, so a refusal here is the token's);
* each root account (TEP_CANVAS_ACCOUNT_IDS, else the token's own, `accounts/self`) exists for
  the token and is a root account: `GET /api/v1/accounts/:id`;
* the token's permissions there: `GET /api/v1/accounts/:id/permissions?permissions[]=...`
  (accounts_controller.rb `permissions`, `rights_status`): any of `temporary_enrollments_add`,
  `_edit`, `_delete` lists pairings and a recipient's temporary enrollments
  (temporary_enrollment_pairings_api_controller.rb `authorize_action`, enrollments_api_controller.rb
  `user_index_enrollments`); `read_roster` lists the account's users (users_controller.rb
  `api_index`); `read_email_addresses` shows their e-mail (lib/api/v1/user.rb `user_json`);
* what it can see: the pairings (and whether Canvas renders the list as `null`, the release the
  sync then reads through users) and the recipients, counted up to :data:`COUNT_LIMIT`;
* the rate-limit headroom: `X-Rate-Limit-Remaining` of the last answer against the bucket's 600
  (app/middleware/request_throttle.rb).

Every line is one line, and none holds the token (the client's messages never do).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import httpx

from tasks.canvas_rest.client import (
    CANVAS_BUCKET_HWM,
    CanvasClient,
    CanvasError,
    CanvasPermissionError,
    CanvasResponse,
    CanvasUnavailable,
)

Level = Literal["ok", "warn", "problem"]
OK: Level = "ok"
WARN: Level = "warn"
PROBLEM: Level = "problem"
EXIT_CODES: dict[Level, int] = {OK: 0, WARN: 1, PROBLEM: 2}

ANY_TEMPORARY = (
    "temporary_enrollments_add",
    "temporary_enrollments_edit",
    "temporary_enrollments_delete",
)
READ_ROSTER = "read_roster"
READ_EMAIL = "read_email_addresses"
CHECKED_PERMISSIONS = (*ANY_TEMPORARY, READ_ROSTER, READ_EMAIL)
# Items counted at most (pages of 100): a check must stay cheap on a large Canvas.
COUNT_LIMIT = 1_000
PER_PAGE = 100
# Headroom below this share of the bucket is a warning: something else spends this token's.
LOW_HEADROOM = 0.5
# A check fails fast: two attempts, short pauses (a sync would retry for longer).
CHECK_ATTEMPTS = 2
CHECK_TIMEOUT_SECONDS = 15.0


@dataclasses.dataclass(frozen=True)
class Finding:
    level: Level
    text: str

    def line(self) -> str:
        return f"{self.level}: {self.text}"


def exit_code(findings: Sequence[Finding]) -> int:
    """0 when every finding is ok, 1 with a warning, 2 with a problem."""
    return max((EXIT_CODES[f.level] for f in findings), default=0)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _Check:
    def __init__(self, client: CanvasClient) -> None:
        self.client = client
        self.findings: list[Finding] = []
        self.last: CanvasResponse | None = None

    def add(self, level: Level, text: str) -> None:
        self.findings.append(Finding(level, _one_line(text)))

    def get(self, path: str, params: Any = None) -> CanvasResponse:
        response = self.client.get(path, params)
        self.last = response
        return response

    # ---- the URL and the token

    def token(self) -> bool:
        url = self.client.base_url
        try:
            response = self.get("/api/v1/users/self")
        except CanvasUnavailable as error:
            self.add(PROBLEM, f"Canvas at {url} does not answer: {error}")
            return False
        except CanvasPermissionError as error:
            self.add(PROBLEM, str(error))
            return False
        except CanvasError as error:
            self.add(PROBLEM, f"Canvas at {url}: {error}")
            return False
        except httpx.HTTPError as error:  # a URL httpx cannot send to at all (no scheme, ...)
            self.add(PROBLEM, f"TEP_CANVAS_URL {url!r} cannot be reached: {error}")
            return False
        body = response.body
        if 300 <= response.status < 400:
            where = response.headers.get("location", "elsewhere")
            self.add(
                PROBLEM,
                f"{url} redirects ({response.status} to {where}): give Canvas's own URL "
                "(TEP_CANVAS_URL), e.g. https://school.instructure.com",
            )
            return False
        if not response.ok or not isinstance(body, dict) or "id" not in body:
            self.add(
                PROBLEM,
                f"{url} does not answer as Canvas does (GET /api/v1/users/self: "
                f"{response.status}{', not JSON' if body is None else ''}): is TEP_CANVAS_URL "
                "Canvas's URL?",
            )
            return False
        name = body.get("name") or "no name"
        self.add(OK, f"Canvas at {url} answers; the token is user {body['id']} ({name})")
        return True

    # ---- each root account

    def account(self, target: int | str) -> int | None:
        try:
            response = self.get(f"/api/v1/accounts/{target}")
        except CanvasPermissionError as error:
            self.add(
                PROBLEM,
                f"account {target}: Canvas refused the token's user ({error.status} on "
                f"{error.method} {error.path}): it must be an admin of the root account with "
                f"{' or '.join(ANY_TEMPORARY)}, and {READ_ROSTER}",
            )
            return None
        body = response.body
        if response.status == 404 or not isinstance(body, dict) or "id" not in body:
            self.add(
                PROBLEM,
                f"account {target}: Canvas has no account this token can see "
                f"(GET /api/v1/accounts/{target} answered {response.status})",
            )
            return None
        account_id = int(body["id"])
        root = body.get("root_account_id")
        if root is not None or body.get("parent_account_id") is not None:
            self.add(
                PROBLEM,
                f"account {account_id} is a sub-account: TEP_CANVAS_ACCOUNT_IDS takes root "
                f"accounts (its root account is {root or body.get('parent_account_id')})",
            )
            return None
        self.add(OK, f"root account {account_id} ({body.get('name') or 'no name'})")
        return account_id

    def permissions(self, account_id: int) -> bool:
        try:
            response = self.get(
                f"/api/v1/accounts/{account_id}/permissions",
                [("permissions[]", name) for name in CHECKED_PERMISSIONS],
            )
        except CanvasPermissionError as error:
            self.add(
                PROBLEM,
                f"account {account_id}: Canvas refused to show the token's permissions "
                f"({error.status}): the token's user must be an admin of the account",
            )
            return False
        held = response.body if isinstance(response.body, dict) else None
        if not response.ok or held is None:
            self.add(
                WARN,
                f"account {account_id}: Canvas did not list the token's permissions "
                f"(GET .../permissions answered {response.status}); the reads below show them",
            )
            return True
        # `rights_status` renders booleans; Canvas's own API document shows them as strings.
        missing = [name for name in CHECKED_PERMISSIONS if held.get(name) not in (True, "true")]
        reading = True
        if all(name in missing for name in ANY_TEMPORARY):
            self.add(
                PROBLEM,
                f"account {account_id}: the token's user lacks {', '.join(ANY_TEMPORARY)}: "
                "one of them is needed to read pairings and temporary enrollments",
            )
            reading = False
        if READ_ROSTER in missing:
            self.add(
                PROBLEM,
                f"account {account_id}: the token's user lacks {READ_ROSTER}, which listing the "
                "account's users (the recipients) needs",
            )
            reading = False
        if reading:
            temporary = [name for name in ANY_TEMPORARY if name not in missing]
            self.add(OK, f"account {account_id}: the token holds {', '.join(temporary)}, "
                     f"{READ_ROSTER}")  # fmt: skip
            partial = [name for name in ANY_TEMPORARY if name in missing]
            if partial:
                self.add(
                    WARN,
                    f"account {account_id}: the token's user lacks {', '.join(partial)} "
                    "(enough to sync; Canvas's own temporary-enrollment pages need them)",
                )
        if READ_EMAIL in missing:
            self.add(
                WARN,
                f"account {account_id}: the token's user lacks {READ_EMAIL}: the mirror gets "
                "no e-mail addresses, and no notices can be sent",
            )
        return reading

    def count(self, path: str, params: list[tuple[str, Any]]) -> tuple[list[Any] | None, bool]:
        """Up to COUNT_LIMIT items of a list (None: Canvas rendered `null`); whether more."""
        response = self.get(path, [*params, ("per_page", PER_PAGE)])
        if response.status == 404:
            raise CanvasError(f"GET {path} answered 404")
        if not response.ok:
            raise CanvasError(
                f"GET {path} answered {response.status}: {response.error_message() or 'no message'}"
            )
        if response.body is None:
            return None, False
        if not isinstance(response.body, list):
            raise CanvasError(f"GET {path} answered a {type(response.body).__name__}, not a list")
        items = list(response.body)
        following = response.next_url()
        while following is not None and len(items) < COUNT_LIMIT:
            page = self.get(following)
            if not page.ok or not isinstance(page.body, list):
                break
            items += page.body
            following = page.next_url()
        return items, following is not None

    def visible(self, account_id: int) -> None:
        path = f"/api/v1/accounts/{account_id}/temporary_enrollment_pairings"
        try:
            pairings, more = self.count(path, [("include_deleted", "true")])
        except CanvasPermissionError as error:
            self.add(PROBLEM, str(error))
            return
        except CanvasError as error:
            self.add(PROBLEM, f"account {account_id}: pairings: {error}")
            return
        if pairings is None:
            self.add(
                WARN,
                f"account {account_id}: Canvas renders the pairing list as null (a known "
                "Canvas release): the sync finds pairings through the recipients' enrollments, "
                "one request more per pairing",
            )
            shown = "pairings listed as null"
        else:
            deleted = sum(1 for p in pairings if _pairing_state(p) == "deleted")
            shown = f"{len(pairings)}{'+' if more else ''} pairings ({deleted} deleted)"
        try:
            recipients, more = self.count(
                f"/api/v1/accounts/{account_id}/users",
                [("temporary_enrollment_recipients", "true")],
            )
        except CanvasPermissionError as error:
            self.add(PROBLEM, str(error))
            return
        except CanvasError as error:
            self.add(PROBLEM, f"account {account_id}: recipients: {error}")
            return
        listed = len(recipients or [])
        self.add(
            OK,
            f"account {account_id}: the token sees {shown}, {listed}{'+' if more else ''} "
            "recipients with live temporary enrollments",
        )

    # ---- the bucket

    def headroom(self) -> None:
        if self.last is None:
            return
        value = self.last.headers.get("x-rate-limit-remaining")
        try:
            remaining = float(value) if value is not None else None
        except ValueError:
            remaining = None
        if remaining is None:
            self.add(
                WARN,
                "Canvas sent no X-Rate-Limit-Remaining: tep cannot pace itself by Canvas's "
                "throttle here (it still backs off when throttled)",
            )
            return
        text = (
            f"rate limit: {remaining:g} of {CANVAS_BUCKET_HWM:g} left in this token's bucket "
            "(X-Rate-Limit-Remaining)"
        )
        if remaining < CANVAS_BUCKET_HWM * LOW_HEADROOM:
            self.add(WARN, f"{text}: something else is spending this token's requests")
        else:
            self.add(OK, text)


def _pairing_state(item: Any) -> Any:
    if isinstance(item, dict):
        inner = item.get("temporary_enrollment_pairing", item)
        if isinstance(inner, dict):
            return inner.get("workflow_state")
    return None


def check_canvas(
    client: CanvasClient, *, account_ids: Sequence[int] | None = None
) -> list[Finding]:
    """The findings of `tep canvas check` for this client's Canvas and token, for these root
    accounts (default: the token's own)."""
    check = _Check(client)
    if check.token():
        targets: list[int | str] = list(account_ids or []) or ["self"]
        for target in targets:
            try:
                account_id = check.account(target)
                if account_id is not None and check.permissions(account_id):
                    check.visible(account_id)
            except CanvasUnavailable as error:
                check.add(PROBLEM, f"account {target}: {error}")
                break
    check.headroom()
    return check.findings


def check_settings(settings: Any) -> list[Finding]:
    """The check with the settings' URL, token and accounts (TEP_CANVAS_*), failing fast."""
    if not settings.canvas_url:
        return [Finding(PROBLEM, "TEP_CANVAS_URL is not set: tep is not beside a hosted Canvas")]
    try:
        client = CanvasClient.from_settings(
            settings,
            max_attempts=CHECK_ATTEMPTS,
            timeout=CHECK_TIMEOUT_SECONDS,
            backoff_base=0.2,
            backoff_cap=1.0,
        )
    except CanvasError as error:
        return [Finding(PROBLEM, _one_line(str(error)))]
    with client:
        return check_canvas(client, account_ids=settings.canvas_account_id_list or None)
