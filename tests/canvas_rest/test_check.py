"""`tep canvas check` (tasks/canvas_rest/check.py) against the test Canvas over real HTTP: a
good admin token, tokens that lack what tep needs, a URL nothing answers at."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import select

from models import Role, transaction
from tasks.canvas_rest.check import (
    PROBLEM,
    Finding,
    check_canvas,
    check_settings,
    exit_code,
)
from tasks.canvas_rest.client import CanvasClient
from tests.api.server import free_port
from tests.canvas_rest.conftest import TEST_BACKOFF_BASE, TEST_BACKOFF_CAP, TestCanvas


def _client(url: str, token: str, *, max_attempts: int = 8) -> CanvasClient:
    return CanvasClient(
        url,
        token,
        backoff_base=TEST_BACKOFF_BASE,
        backoff_cap=TEST_BACKOFF_CAP,
        max_attempts=max_attempts,
    )


def _lines(findings: list[Finding]) -> list[str]:
    lines = [finding.line() for finding in findings]
    assert all("\n" not in line for line in lines), lines
    return lines


def test_a_good_admin_token_is_all_ok(canvas: TestCanvas, client: CanvasClient) -> None:
    provider = canvas.add_user("Pat Provider")
    recipient = canvas.add_user("Rui Recipient")
    course, _section = canvas.add_course("Biology 100")
    canvas.make_pairing(provider, recipient, [course])

    findings = check_canvas(client, account_ids=[canvas.account_id])

    lines = _lines(findings)
    assert exit_code(findings) == 0, lines
    text = "\n".join(lines)
    assert f"the token is user {canvas.admin_id} (Admin)" in text
    assert f"root account {canvas.account_id}" in text
    assert "temporary_enrollments_add, temporary_enrollments_edit" in text
    assert "1 pairings (0 deleted), 1 recipients" in text
    assert "rate limit: 600 of 600" in text
    assert canvas.token not in text


def test_the_tokens_own_account_is_checked_by_default(
    canvas: TestCanvas, client: CanvasClient
) -> None:
    findings = check_canvas(client)
    assert exit_code(findings) == 0
    assert any(f"root account {canvas.account_id}" in line for line in _lines(findings))


def test_a_token_of_a_user_who_is_not_an_admin_is_a_problem_naming_the_permission(
    canvas: TestCanvas,
) -> None:
    nobody = canvas.world.add_user("Not an admin")
    token = canvas.token_for(nobody)
    with _client(canvas.url, token) as client:
        findings = check_canvas(client)

    assert exit_code(findings) == 2
    problems = [f.text for f in findings if f.level == PROBLEM]
    assert len(problems) == 1 and "temporary_enrollments_add" in problems[0], problems
    assert "read_roster" in problems[0]
    assert all(token not in line for line in _lines(findings))


def test_an_admin_role_without_temporary_enrollment_permissions_is_a_problem(
    canvas: TestCanvas,
) -> None:
    """A custom account role (AccountMembership) holds none of the temporary-enrollment
    permissions by default (RoleOverride::PERMISSIONS `true_for` AccountAdmin only)."""
    with transaction(canvas.factory) as session:
        session.add(
            Role(
                name="Helpdesk",
                base_role_type="AccountMembership",
                account_id=canvas.account_id,
                root_account_id=canvas.account_id,
                workflow_state="active",
            )
        )
    helper = canvas.world.add_user("Helpdesk person")
    canvas.world.grant(helper, "Helpdesk")
    with canvas.factory() as session:
        assert session.scalar(select(Role.id).where(Role.name == "Helpdesk")) is not None
    with _client(canvas.url, canvas.token_for(helper)) as client:
        findings = check_canvas(client)

    lines = _lines(findings)
    assert exit_code(findings) == 2, lines
    [problem] = [f.text for f in findings if f.level == PROBLEM]
    assert "lacks temporary_enrollments_add, temporary_enrollments_edit" in problem


def test_a_url_nothing_answers_at_is_one_problem_line(canvas: TestCanvas) -> None:
    with _client(f"http://127.0.0.1:{free_port()}", canvas.token, max_attempts=2) as client:
        findings = check_canvas(client)

    [finding] = findings
    assert finding.level == PROBLEM and "does not answer" in finding.text
    assert exit_code(findings) == 2 and canvas.token not in finding.line()
    assert "\n" not in finding.line()


def test_a_url_that_is_not_canvas_is_a_problem(canvas: TestCanvas) -> None:
    with _client(f"{canvas.url}/not-canvas", canvas.token) as client:
        findings = check_canvas(client)
    assert exit_code(findings) == 2
    assert "does not answer as Canvas does" in findings[0].text


def test_low_headroom_is_a_warning(canvas: TestCanvas, client: CanvasClient) -> None:
    canvas.proxy.add_fault("throttle", times=1, match="/permissions")
    findings = check_canvas(client)
    # The throttle answer was retried; its 0 headroom is not the last answer's.
    assert exit_code(findings) == 0, _lines(findings)
    assert client.cost.throttled == 1


def test_settings_without_a_url_are_a_problem() -> None:
    settings = SimpleNamespace(canvas_url="", canvas_token="x", canvas_account_id_list=[])
    [finding] = check_settings(settings)
    assert finding.level == PROBLEM and "TEP_CANVAS_URL" in finding.text


def test_settings_reach_the_canvas(canvas: TestCanvas) -> None:
    settings = SimpleNamespace(
        canvas_url=canvas.url,
        canvas_token=canvas.token,
        canvas_account_id_list=[canvas.account_id],
        canvas_max_in_flight=2,
    )
    findings = check_settings(settings)
    assert exit_code(findings) == 0, _lines(findings)


@pytest.mark.parametrize(
    ("levels", "code"),
    [((), 0), (("ok",), 0), (("ok", "warn"), 1), (("warn", "problem", "ok"), 2)],
)
def test_exit_codes(levels: tuple[str, ...], code: int) -> None:
    assert exit_code([Finding(level, "x") for level in levels]) == code  # type: ignore[arg-type]


def test_a_null_pairing_list_is_a_warning(canvas: TestCanvas, client: CanvasClient) -> None:
    """The Canvas release whose pairing index renders `null`
    (temporary_enrollment_pairings_api_controller.rb#index)."""
    canvas.proxy.add_fault(
        "respond",
        match=r"^GET /api/v1/accounts/\w+/temporary_enrollment_pairings\?",
        status=200,
        body="null",
    )
    findings = check_canvas(client)
    assert exit_code(findings) == 1, _lines(findings)
    [warning] = [f.text for f in findings if f.level == "warn"]
    assert "renders the pairing list as null" in warning
    assert any("pairings listed as null" in f.text for f in findings)
