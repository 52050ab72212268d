"""The deploy, packaging and CI files say what README says they do.

docker-compose.yml, .env.example, deploy/prometheus/, the Dockerfile, constraints.txt and .ci/run
are read as data here; `docker compose config` and `promtool` check them too where those tools
are on PATH (.ci/run provides both: under CI=true a missing tool fails, elsewhere it skips).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import itertools
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from prometheus_client.parser import text_string_to_metric_families

from migrations import upgrade
from models import make_engine, make_sessionmaker, utcnow
from tasks import lifecycle, metrics
from tests import conftest, services
from tests import factories as f
from tests.processes import client_app
from worker.celery_app import SOFT_SHUTDOWN_SECONDS
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
# Passwords written into a scratch .env for `docker compose config`.
FILLED_IN = {
    "POSTGRES_PASSWORD": "pg0123456789",
    "REDIS_PASSWORD": "redis0123456789",
    "TEP_METRICS_TOKEN": "0123456789abcdef" * 2,
}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH", re.IGNORECASE)
REFERENCE = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(:?[?-][^}]*)?\}$")
# A URL's password: a ${...} (whose message may hold spaces) or anything up to the `@`.
URL_PASSWORD = re.compile(r"://[^/:@\s]*:(\$\{[^}]*\}|[^@\s]+)@")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> Any:
    """docker-compose.yml as written (anchors and merge keys resolved, ${...} not)."""
    return load(ROOT / "docker-compose.yml")


def long_running(compose: Any) -> dict[str, Any]:
    """Every service but the one-shot ones (that others wait for to complete: `migrate`)."""
    one_shot = {
        name
        for service in compose["services"].values()
        for name, condition in service.get("depends_on", {}).items()
        if condition["condition"] == "service_completed_successfully"
    }
    return {name: s for name, s in compose["services"].items() if name not in one_shot}


def seconds(duration: str) -> float:
    """A compose duration such as `1m30s`."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts if u != "ms")


def strings(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(nearest mapping key, string) for every string in a YAML tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from strings(v, str(k))
    elif isinstance(node, list):
        for item in node:
            yield from strings(item, key)
    elif isinstance(node, str):
        yield key, node


# docker-compose.yml


def test_the_worker_turns_docker_stop_into_a_soft_shutdown(compose: Any) -> None:
    """README (Celery settings): under an orchestrator, REMAP_SIGTERM=SIGQUIT; the grace period
    must outlast the soft shutdown, or Docker's SIGKILL comes before the requeue."""
    worker = compose["services"]["worker"]
    assert worker["environment"]["REMAP_SIGTERM"] == "SIGQUIT"
    assert seconds(worker["stop_grace_period"]) > SOFT_SHUTDOWN_SECONDS


def test_every_long_running_service_has_a_healthcheck_and_restarts(compose: Any) -> None:
    services_ = long_running(compose)
    assert {"postgres", "redis", "worker", "beat", "api", "prometheus"} <= set(services_)
    for name, service in services_.items():
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), name
        assert service.get("restart") == "unless-stopped", name


def test_beat_answers_the_ping_its_healthcheck_sends(compose: Any) -> None:
    beat = compose["services"]["beat"]
    assert "--enable-remote-control" in beat["command"]
    assert "inspect ping -d celerybeat@$$HOSTNAME" in beat["healthcheck"]["test"][1]


def test_no_password_is_written_in_the_compose_file(compose: Any) -> None:
    """Every password, secret and token is a ${...} from .env (or a secret file's path)."""
    with_password = set()
    for key, value in strings(compose):
        for password in URL_PASSWORD.findall(value):
            assert REFERENCE.match(password), (key, value)
            with_password.add(key)
        if SECRET_KEY.search(key) and key != "secrets" and not key.endswith("_FILE"):
            assert REFERENCE.match(value), (key, value)
    for service in compose["services"].values():
        command = service.get("command", [])
        for flag, value in itertools.pairwise(command):
            if flag == "--requirepass":
                assert REFERENCE.match(value), value
    for name, secret in compose["secrets"].items():
        assert set(secret) <= {"environment", "file"}, name
    assert with_password == {"TEP_DATABASE_URL", "TEP_BROKER_URL", "TEP_RESULT_BACKEND"}
    assert "--requirepass" in compose["services"]["redis"]["command"]


def test_the_tep_services_read_the_env_file_gitignore_keeps_out(compose: Any) -> None:
    for name in ("migrate", "worker", "beat", "api"):
        assert compose["services"][name]["env_file"] == ".env", name
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in (ROOT / ".dockerignore").read_text().splitlines()


def test_pulled_images_are_pinned_to_a_minor_version(compose: Any) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            continue
        assert re.search(r":v?\d+\.\d+", service["image"]), (name, service["image"])


def test_prometheus_scrapes_the_worker_port_compose_exposes(compose: Any) -> None:
    port = compose["x-tep-env"]["TEP_METRICS_PORT"]
    assert port in compose["services"]["worker"]["expose"]
    jobs = {job["job_name"]: job for job in load(PROMETHEUS / "prometheus.yml")["scrape_configs"]}
    (discovery,) = jobs["tep-worker"]["dns_sd_configs"]
    assert discovery["names"] == ["worker"]  # the service: every worker container
    assert str(discovery["port"]) == port


def test_prometheus_sends_the_api_the_token_compose_mounts(compose: Any) -> None:
    jobs = {job["job_name"]: job for job in load(PROMETHEUS / "prometheus.yml")["scrape_configs"]}
    api = jobs["tep-api"]
    assert api["static_configs"] == [{"targets": ["api:8000"]}]
    assert api["authorization"]["type"] == "Bearer"
    (secret,) = compose["services"]["prometheus"]["secrets"]
    assert api["authorization"]["credentials_file"] == f"/run/secrets/{secret}"
    # The same variable the API checks the token against.
    assert compose["secrets"][secret] == {"environment": "TEP_METRICS_TOKEN"}
    assert compose["x-tep-env"]["TEP_METRICS_TOKEN"].startswith("${TEP_METRICS_TOKEN:?")
    assert "./deploy/prometheus:/etc/prometheus:ro" in compose["services"]["prometheus"]["volumes"]


# .env.example


def env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else f"TEP_{field.upper()}"


def as_env_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def test_env_example_lists_every_setting_at_its_default() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    documented = {}
    for line in lines:
        match = re.match(r"^#? ?(TEP_[A-Z0-9_]+)=(.*)$", line)
        if match:
            documented[match.group(1)] = match.group(2)
    for field, info in Settings.model_fields.items():
        name = env_name(field)
        assert name in documented, f"{name} is missing from .env.example"
        assert documented[name] == as_env_text(info.default), name
    assert set(documented) == {env_name(field) for field in Settings.model_fields}


def test_env_example_sets_every_variable_compose_requires(compose: Any) -> None:
    required = {
        match
        for _, value in strings(compose)
        for match in re.findall(r"\$\{([A-Z_][A-Z0-9_]*):\?", value)
    }
    assert required == set(FILLED_IN)
    active = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if re.match(r"^[A-Z_]+=", line)
    }
    assert required <= active


def compose_command() -> list[str]:
    """Docker Compose v2: the docker CLI plugin, or a standalone `docker-compose`."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        version = subprocess.run(
            [*command, "version", "--short"], capture_output=True, text=True, check=False
        )
        if version.returncode == 0 and version.stdout.strip().lstrip("v").startswith("2"):
            return command
    services.unavailable("Docker Compose v2", RuntimeError("no `docker compose` on PATH"))
    raise AssertionError("unreachable")


def test_docker_compose_config_validates(tmp_path: Path) -> None:
    """As README says to run it: .env copied from .env.example, its three values filled in."""
    command = compose_command()
    shutil.copy(ROOT / "docker-compose.yml", tmp_path)
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    env = {k: v for k, v in os.environ.items() if k not in FILLED_IN and "COMPOSE" not in k}

    def config() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, "config", "--format", "json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    empty = config()  # the copy as shipped: the passwords are still to be set
    assert empty.returncode != 0
    assert "is missing a value: set " in empty.stderr and " in .env" in empty.stderr

    text = (tmp_path / ".env").read_text()
    for name, value in FILLED_IN.items():
        text = text.replace(f"\n{name}=\n", f"\n{name}={value}\n")
    (tmp_path / ".env").write_text(text)
    filled = config()
    assert filled.returncode == 0, filled.stderr
    model = json.loads(filled.stdout)
    worker = model["services"]["worker"]["environment"]
    assert worker["REMAP_SIGTERM"] == "SIGQUIT"
    assert worker["TEP_DATABASE_URL"] == "postgresql://tep:pg0123456789@postgres:5432/tep"
    assert worker["TEP_BROKER_URL"] == "redis://:redis0123456789@redis:6379/0"
    assert "--requirepass" in model["services"]["redis"]["command"]


# deploy/prometheus/


def exported_metrics(tmp_path: Path) -> dict[str, set[str]]:
    """The sample names the metrics endpoints serve, with their labels: rendered by
    tasks.metrics from a database where a sweep ran, expired one pairing and skipped another."""
    url = f"sqlite:///{tmp_path / 'metrics.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    factory = make_sessionmaker(engine)
    now = utcnow()
    with factory() as session:
        root = f.account(session)
        f.temporary_pairing(session, root, [now - dt.timedelta(hours=1)], ending_state="completed")
        f.temporary_pairing(session, root, [now - dt.timedelta(hours=1)], ending_state="archived")
        session.commit()
    lifecycle.run_sweep(factory)
    body, _ = metrics.render_metrics(factory, ["https://hooks.example.edu/tep"])
    engine.dispose()
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def test_the_alert_rules_use_metrics_tep_exports(tmp_path: Path) -> None:
    exported = exported_metrics(tmp_path)
    jobs = {job["job_name"] for job in load(PROMETHEUS / "prometheus.yml")["scrape_configs"]}
    rules = [rule for group in load(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} >= {
        "TepWorkerDown",
        "TepSweepNotRunning",
        "TepDueBacklog",
        "TepPairingsSkipped",
        "TepWebhooksFailing",
    }
    for rule in rules:
        expr = rule["expr"]
        used = set(re.findall(r"\btep_[a-z0-9_]+\b", expr))
        assert used <= set(exported), (rule["alert"], used - set(exported))
        for labels, name in re.findall(r"by \(([^)]*)\) \((tep_[a-z0-9_]+)\)", expr):
            assert {label.strip() for label in labels.split(",")} <= exported[name], expr
        assert set(re.findall(r'job="([^"]+)"', expr)) <= jobs, expr


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        services.unavailable("promtool", RuntimeError("not on PATH (.ci/run unpacks one)"))
    assert path is not None
    return path


def test_promtool_accepts_the_config_and_the_rules(tmp_path: Path) -> None:
    """`promtool check config` also checks the rule files, and that the token file exists: a
    scratch one stands in for compose's secret."""
    tool = promtool()
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path)
    token = tmp_path / "token"
    token.write_text(FILLED_IN["TEP_METRICS_TOKEN"])
    config = (PROMETHEUS / "prometheus.yml").read_text()
    assert config.count("/run/secrets/tep_metrics_token") == 1
    (tmp_path / "prometheus.yml").write_text(
        config.replace("/run/secrets/tep_metrics_token", str(token))
    )
    result = subprocess.run(
        [tool, "check", "config", "prometheus.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rules = sum(len(group["rules"]) for group in load(PROMETHEUS / "alerts.yml")["groups"])
    assert f"SUCCESS: {rules} rules found" in result.stdout


def test_the_alert_rules_pass_their_unit_tests() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", "alerts.test.yml"],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# Dockerfile, constraints.txt, .ci/run


def instructions(dockerfile: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    return [line.strip() for line in joined.splitlines() if line.strip() and line[0] != "#"]


def test_the_image_installs_the_pinned_dependencies_before_the_source() -> None:
    steps = instructions((ROOT / "Dockerfile").read_text())
    copy_pins = steps.index("COPY pyproject.toml constraints.txt ./")
    install = next(i for i, s in enumerate(steps) if "pip install -c constraints.txt -r" in s)
    copy_source = steps.index("COPY . .")
    assert copy_pins < install < copy_source
    assert re.match(r"FROM python:3\.11-", steps[0])
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert {"tests", "bench", ".git"} <= set(ignored)


def dev_install() -> dict[str, str]:
    """Every distribution `pip install -e '.[dev]'` installs (pyproject.toml's requirements and
    theirs, extras and markers followed), by name, with the version installed here."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(text) for text in project["dependencies"]]
    todo += [Requirement(text) for text in project["optional-dependencies"]["dev"]]
    versions: dict[str, str] = {}
    extras: dict[str, set[str]] = {}
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in versions and requirement.extras <= extras[name]:
            continue
        distribution = importlib.metadata.distribution(requirement.name)
        versions[name] = distribution.version
        extras.setdefault(name, set()).update(requirement.extras)
        for text in distribution.requires or []:
            needed = Requirement(text)
            if needed.marker is None or any(
                needed.marker.evaluate({"extra": extra}) for extra in ("", *extras[name])
            ):
                todo.append(needed)
    return versions


def test_constraints_pin_every_distribution_of_the_dev_install() -> None:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    installed = dev_install()
    refresh = "refresh constraints.txt as README's 'Pinned dependencies' says"
    assert sorted(set(installed) - set(pins)) == [], refresh
    assert sorted(set(pins) - set(installed) - {"pip"}) == [], refresh
    differ = {n: (pins[n], v) for n, v in installed.items() if pins[n] != v}
    assert differ == {}, f"pinned vs installed here: {refresh}, or install with -c"


def test_ci_installs_the_pins_in_a_venv_it_removes() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    subprocess.run(["bash", "-n", str(ROOT / ".ci" / "run")], check=True)
    assert "trap 'rm -rf \"$scratch\"' EXIT" in script
    assert "venv=$scratch/venv" in script
    assert "pip\" install --quiet -c constraints.txt -e '.[dev]'" in script
    assert script.rstrip().splitlines()[-1] == "python -m pytest"  # README's test command


# The broker keys the test session leaves (tests/conftest.py)


@pytest.mark.redis
def test_the_session_deletes_its_queues_from_redis(redis_url: str) -> None:
    """Kombu keeps a queue's list, bindings and unacknowledged messages after its last consumer
    is gone; the session deletes those of the queues it made, and no one else's."""
    doomed, kept = services.unique_queue(), services.unique_queue()
    assert {doomed, kept} <= set(services.SESSION_QUEUES)
    client = redis.Redis.from_url(redis_url)

    def keys(queue: str) -> set[bytes]:
        return set(client.scan_iter(match=f"*{queue}*"))

    def unacked(queue: str) -> int:
        entries = client.hvals("unacked")  # each [message, exchange, routing key]
        return sum(1 for entry in entries if queue in json.loads(entry)[1:])

    try:
        with client_app(redis_url, kept).connection_for_write() as connection:
            for name in (doomed, kept):
                # A channel each: prefetch (below) counts per channel.
                queue = connection.SimpleQueue(name, channel=connection.channel())
                for n in range(3):
                    queue.put({"n": n})
                queue.consumer.qos(prefetch_count=1)
                queue.get(timeout=5)  # not acknowledged, as by a worker that was killed
            assert {doomed.encode(), f"_kombu.binding.{doomed}".encode()} <= keys(doomed)
            assert unacked(doomed) == unacked(kept) == 1

            conftest.delete_queue_keys(client, [doomed])

            assert keys(doomed) == set()
            assert unacked(doomed) == 0
            assert kept.encode() in keys(kept)
            assert unacked(kept) == 1
        # The connection, closed, put its unacknowledged message back on `kept`.
        conftest.delete_queue_keys(client, [kept])
        assert keys(kept) == set()
    finally:
        conftest.delete_queue_keys(client, [doomed, kept])
        client.close()
