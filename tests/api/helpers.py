"""Arranging data through the API itself, as a client would."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import httpx

from models import utcnow

_n = itertools.count(1)


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.text)
    return response.json()


def error(response: httpx.Response, status: int) -> str:
    """The single Canvas error message of a response that must have failed with `status`."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"errors"} and len(body["errors"]) >= 1, body
    return " | ".join(item["message"] for item in body["errors"])


def course(client: httpx.Client, name: str = "Course") -> dict[str, Any]:
    return ok(client.post("/accounts/self/courses", data={"course[name]": name}))  # type: ignore[no-any-return]


def user(client: httpx.Client, name: str = "Some One") -> dict[str, Any]:
    login = f"login{next(_n)}-{utcnow().timestamp()}"
    return ok(  # type: ignore[no-any-return]
        client.post(
            "/accounts/self/users", data={"user[name]": name, "pseudonym[unique_id]": login}
        )
    )


def unwrap(body: Any) -> dict[str, Any]:
    """The pairing inside Canvas's root key: every pairing answer is exactly
    `{"temporary_enrollment_pairing": {...}}`."""
    assert isinstance(body, dict) and set(body) == {"temporary_enrollment_pairing"}, body
    inner = body["temporary_enrollment_pairing"]
    assert isinstance(inner, dict), body
    return inner


def pairing_of(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    """The pairing of a pairing answer that must have `status`."""
    return unwrap(ok(response, status))


def pairings_of(response: httpx.Response) -> list[dict[str, Any]]:
    """The pairings of a list answer: an array of wrapped pairings."""
    body = ok(response)
    assert isinstance(body, list), body
    return [unwrap(item) for item in body]


def pairing(client: httpx.Client, ending_state: str | None = None) -> dict[str, Any]:
    data = {"ending_enrollment_state": ending_state} if ending_state else {}
    return pairing_of(client.post("/accounts/self/temporary_enrollment_pairings", data=data), 201)


def enroll(
    client: httpx.Client,
    course_id: int,
    user_id: int | str,
    *,
    type: str = "TeacherEnrollment",
    state: str = "active",
    **extra: Any,
) -> httpx.Response:
    data = {
        "enrollment[user_id]": user_id,
        "enrollment[type]": type,
        "enrollment[enrollment_state]": state,
    }
    for key, value in extra.items():
        data[f"enrollment[{key}]"] = value.isoformat() if isinstance(value, dt.datetime) else value
    return client.post(f"/courses/{course_id}/enrollments", data=data)


def temporary(
    client: httpx.Client,
    course_id: int,
    recipient_id: int,
    provider_id: int,
    pairing_id: int,
    end_at: dt.datetime,
    **extra: Any,
) -> httpx.Response:
    return enroll(
        client,
        course_id,
        recipient_id,
        end_at=end_at,
        temporary_enrollment_source_user_id=provider_id,
        temporary_enrollment_pairing_id=pairing_id,
        **extra,
    )
