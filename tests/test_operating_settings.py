"""The Celery settings the README's Operating section promises, derived from TEP_ settings."""

from __future__ import annotations

import pytest

from tasks import jobs
from worker.celery_app import broker_transport_options, create_app, time_limits
from worker.redelivery import CappedDeliveryTask
from worker.settings import Settings, SettingsError, load_settings, redact


@pytest.mark.parametrize("visibility", [3.0, 600.0, 3600.0, 86_400.0])
def test_time_limits_stay_below_the_visibility_timeout(visibility: float) -> None:
    soft, hard = time_limits(visibility)
    assert 0 < soft < hard < visibility


def test_defaults_are_25_and_30_minutes_under_an_hour() -> None:
    app = create_app(Settings(broker_url="redis://127.0.0.1:6379/0"))
    assert app.conf.task_soft_time_limit == 25 * 60
    assert app.conf.task_time_limit == 30 * 60
    assert app.conf.broker_transport_options["visibility_timeout"] == 3600
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.accept_content == ["json"]
    assert app.conf.task_reject_on_worker_lost is False
    assert jobs.expire_due_pairings.name in app.tasks  # registered by shared_task
    sweep = app.tasks[jobs.expire_due_pairings.name]
    assert sweep.acks_late is True
    assert isinstance(sweep, CappedDeliveryTask)  # the redelivery cap applies to it


def test_unacked_messages_are_looked_for_at_least_once_per_visibility_timeout() -> None:
    for visibility in (5.0, 60.0, 3600.0):
        options = broker_transport_options(
            # Timers off: a horizon past half so short a timeout is refused (tests/test_timers.py).
            Settings(
                broker_url="redis://h:6379/0", visibility_timeout_seconds=visibility, timers=False
            )
        )
        period = options["unacked_restore_interval"] * options["unacked_restore_throttle"]
        assert period <= max(visibility, 1)
    assert broker_transport_options(Settings(broker_url="sqla+sqlite:///b.sqlite")) == {}


def test_passwords_are_redacted_from_setting_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert redact("postgresql://tep:hunter2@db:5432/tep") == "postgresql://tep:***@db:5432/tep"
    assert redact("redis://:hunter2@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redact("redis://redis:6379/0") == "redis://redis:6379/0"
    monkeypatch.setenv("TEP_DATABASE_URL", "mysql://tep:hunter2@db/tep")
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert "hunter2" not in str(error.value)
    assert "mysql://tep:***@db/tep" in str(error.value)
