"""docker-compose.yml and the Dockerfile agree with the code: the command table, the settings
fields and their defaults. Nothing is built here (no Docker engine); the files are parsed, and
the HTTP health probes are run against a real function."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from local.commands import GRACEFUL_TIMEOUT_S, SERVICES, argv
from local.embedded import free_port
from taskbus.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
HTTP_SERVICES = ("enqueue", "status")
FIELD_ENV_NAMES = {field.name.upper() for field in dataclasses.fields(Settings)}


# --- parsing -------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; comments dropped, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        if not full:
            continue
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def dockerfile_args(keyword: str) -> list[str]:
    return [rest for kw, rest in dockerfile_instructions() if kw == keyword]


def dockerfile_exec_form(keyword: str) -> list[str]:
    """The last ENTRYPOINT/CMD, which must be in JSON (exec) form so signals reach the service."""
    values = dockerfile_args(keyword)
    assert values, f"the Dockerfile has no {keyword}"
    parsed = json.loads(values[-1])
    assert isinstance(parsed, list) and all(isinstance(part, str) for part in parsed), (keyword, parsed)
    return parsed


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in dockerfile_args("ENV"):
        for token in shlex.split(rest):
            name, sep, value = token.partition("=")
            assert sep, f"ENV {rest!r}: use the NAME=value form"
            env[name] = value
    return env


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "no services in docker-compose.yml"
    return data


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"docker-compose.yml has no service {name!r}"
    assert isinstance(services[name], dict)
    return services[name]


def environment(name: str) -> dict[str, str]:
    """A service's environment as a dict (compose accepts a mapping or a list of NAME=value)."""
    raw = service(name).get("environment") or {}
    if isinstance(raw, list):
        pairs = [item.partition("=") for item in raw]
        return {key: value for key, _, value in pairs}
    assert isinstance(raw, dict)
    return {key: "" if value is None else str(value) for key, value in raw.items()}


def container_settings(name: str) -> Settings:
    """The settings `Settings.from_env()` builds inside that service's container."""
    return Settings.from_env({**dockerfile_env(), **environment(name)})


def command_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return shlex.split(value)
    assert isinstance(value, list), value
    return [str(part) for part in value]


def published_ports(name: str) -> list[tuple[int, int]]:
    """(host port, container port) for each published port of a service."""
    result = []
    for entry in service(name).get("ports") or []:
        if isinstance(entry, dict):
            result.append((int(entry["published"]), int(entry["target"])))
            continue
        spec = str(entry).split("/")[0]  # drop a /tcp suffix
        parts = spec.split(":")
        assert len(parts) >= 2, f"{name}: publish {entry!r} as HOST:CONTAINER"
        result.append((int(parts[-2]), int(parts[-1])))
    return result


def duration_s(value: str) -> float:
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a compose duration: {value!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def listen_port(name: str) -> int:
    settings = Settings()
    return settings.enqueue_port if name == "enqueue" else settings.status_port


# --- services and images -------------------------------------------------------------------

def test_the_stack_is_redis_plus_each_service_of_the_command_table() -> None:
    assert set(compose()["services"]) == {"redis", *SERVICES}
    assert set(SERVICES) == {"enqueue", "status", "worker"}


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_builds_the_repository_dockerfile(name: str) -> None:
    build = service(name).get("build")
    assert build is not None, f"{name} does not build the image"
    context, dockerfile = (build, "Dockerfile") if isinstance(build, str) else (
        build.get("context", "."), build.get("dockerfile", "Dockerfile"))
    assert (COMPOSE_FILE.parent / context).resolve() == ROOT
    assert (ROOT / context / dockerfile).resolve() == DOCKERFILE


def test_redis_is_an_image_not_a_build() -> None:
    redis_service = service("redis")
    assert "build" not in redis_service
    assert redis_service.get("image") == "redis:7.4-alpine"


@pytest.mark.parametrize("name", SERVICES)
def test_entrypoint_plus_command_is_local_serve_of_the_service(name: str) -> None:
    entrypoint = dockerfile_exec_form("ENTRYPOINT")
    assert "entrypoint" not in service(name), f"{name} must keep the image's entry point"
    full = entrypoint + command_list(service(name).get("command"))
    assert full == ["python", "-m", "local.serve", name]  # local.serve accepts exactly SERVICES


@pytest.mark.parametrize("name", HTTP_SERVICES)
def test_the_served_command_runs_the_service_function_under_gunicorn(name: str) -> None:
    command = argv(name, container_settings(name))
    assert command[1:3] == ["-m", "gunicorn"]
    target = f'functions_framework:create_app(target="{name}", source="functions/{name}/main.py")'
    assert target in command
    assert (ROOT / "functions" / name / "main.py").is_file()
    assert command[command.index("--bind") + 1] == f"0.0.0.0:{listen_port(name)}"


def test_the_served_worker_command_is_the_worker_module() -> None:
    assert argv("worker", container_settings("worker"))[1:] == ["-m", "worker_fn"]
    assert (ROOT / "worker_fn" / "__main__.py").is_file()


def test_the_default_command_is_a_service() -> None:
    assert dockerfile_exec_form("CMD") == ["enqueue"]


# --- environment ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", SERVICES)
def test_every_environment_name_is_a_settings_field(name: str) -> None:
    env = environment(name)
    assert env, f"{name} has no environment"
    unknown = sorted(set(env) - FIELD_ENV_NAMES)
    assert not unknown, f"{name}: not fields of Settings: {unknown}"


@pytest.mark.parametrize("name", SERVICES)
def test_the_compose_environment_parses_into_settings(name: str) -> None:
    Settings.from_env(environment(name))
    settings = container_settings(name)
    assert settings.host == "0.0.0.0"
    assert settings.redis_url == "redis://redis:6379/0"
    assert urlsplit(settings.redis_url).hostname in compose()["services"]
    assert settings.port == 0, "PORT would override the service's own port"


def test_the_dockerfile_environment_names_are_settings_fields_or_python_ones() -> None:
    env = dockerfile_env()
    assert env.get("HOST") == "0.0.0.0"
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("PYTHONPATH") == "/app"
    others = sorted(key for key in set(env) - FIELD_ENV_NAMES if not key.startswith(("PYTHON", "PIP_")))
    assert not others, f"Dockerfile ENV names that are neither settings nor Python's: {others}"


def test_enqueue_links_to_the_published_status_port() -> None:
    base = urlsplit(environment("enqueue")["STATUS_BASE_URL"])
    assert base.scheme == "http" and base.path in ("", "/")
    assert base.port in [host for host, _ in published_ports("status")]


# --- ports, health, lifecycle ----------------------------------------------------------------

@pytest.mark.parametrize("name", HTTP_SERVICES)
def test_published_port_is_the_settings_default_and_the_configured_port(name: str) -> None:
    port = listen_port(name)
    assert (port, port) in published_ports(name)
    assert [container for _, container in published_ports(name)] == [port]
    assert int(environment(name)[f"{name.upper()}_PORT"]) == port
    assert getattr(container_settings(name), f"{name}_port") == port
    exposed = {int(token.split("/")[0]) for rest in dockerfile_args("EXPOSE") for token in rest.split()}
    assert port in exposed


def test_the_worker_publishes_nothing() -> None:
    assert published_ports("worker") == []


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_waits_for_a_healthy_redis(name: str) -> None:
    depends_on = service(name).get("depends_on")
    assert isinstance(depends_on, dict), f"{name}: depends_on must use the long form with a condition"
    assert depends_on.get("redis", {}).get("condition") == "service_healthy"


@pytest.mark.parametrize("name", SERVICES)
def test_stop_grace_period_covers_the_drain(name: str) -> None:
    grace = duration_s(str(service(name).get("stop_grace_period")))
    assert grace == 10.0
    drain = GRACEFUL_TIMEOUT_S if name in HTTP_SERVICES else container_settings(name).grace_s
    assert grace > drain, f"{name} would be killed before it drains"
    assert dockerfile_args("STOPSIGNAL") == ["SIGTERM"]


def test_the_worker_restarts_unless_stopped() -> None:
    assert service("worker").get("restart") == "unless-stopped"


def health_probe(name: str) -> list[str]:
    test = service(name).get("healthcheck", {}).get("test")
    assert isinstance(test, list) and test[0] == "CMD", f"{name}: healthcheck test must be CMD exec form"
    return [str(part) for part in test[1:]]


@pytest.mark.parametrize("name", HTTP_SERVICES)
def test_http_healthcheck_probes_healthz_on_the_service_port_with_python(name: str) -> None:
    probe = health_probe(name)
    assert probe[0] == "python", "the slim image has python, not curl"
    urls = re.findall(r"https?://[^\s'\"]+", " ".join(probe))
    assert len(urls) == 1, urls
    url = urlsplit(urls[0])
    assert url.hostname in ("127.0.0.1", "localhost") and url.path == "/healthz"
    assert url.port == listen_port(name)


@pytest.mark.parametrize("name", HTTP_SERVICES)
def test_http_healthcheck_passes_on_a_live_function_and_fails_without_one(
        name: str, functions: dict[str, str]) -> None:
    """Run the probe itself, pointed at the test session's real function, then at a closed port."""
    probe = health_probe(name)
    container_base = f"http://127.0.0.1:{listen_port(name)}"
    assert container_base in " ".join(probe)

    def run(base: str) -> int:
        command = [sys.executable] + [part.replace(container_base, base) for part in probe[1:]]
        return subprocess.run(command, capture_output=True, timeout=20).returncode

    assert run(functions[name]) == 0
    assert run(f"http://127.0.0.1:{free_port()}") != 0


def test_redis_persists_with_append_only_file_and_has_a_healthcheck() -> None:
    redis_service = service("redis")
    command = command_list(redis_service.get("command"))
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    test = redis_service.get("healthcheck", {}).get("test")
    assert command_list(test)[-2:] == ["redis-cli", "ping"]
    volumes = [str(volume) for volume in redis_service.get("volumes") or []]
    named = [volume.split(":")[0] for volume in volumes if volume.split(":")[1:2] == ["/data"]]
    assert named and named[0] in (compose().get("volumes") or {}), "/data must be a named volume"


# --- image -----------------------------------------------------------------------------------

def test_dockerfile_installs_requirements_before_copying_the_source() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert ("WORKDIR", "/app") in instructions
    keywords = [kw for kw, _ in instructions]
    copy_requirements = next(i for i, (kw, rest) in enumerate(instructions)
                             if kw == "COPY" and rest.split()[0] == "requirements.txt")
    install = next(i for i, (kw, rest) in enumerate(instructions)
                   if kw == "RUN" and "pip install --no-cache-dir -r requirements.txt" in rest)
    copy_source = next(i for i, (kw, rest) in enumerate(instructions) if kw == "COPY" and rest.split()[0] == ".")
    assert copy_requirements < install < copy_source
    assert keywords.index("WORKDIR") < copy_requirements


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = dockerfile_args("USER")
    assert users, "the Dockerfile never leaves root"
    assert users[-1].split(":")[0] not in ("root", "0")
    keywords = [kw for kw, _ in dockerfile_instructions()]
    assert len(keywords) - 1 - keywords[::-1].index("USER") < keywords.index("ENTRYPOINT")


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    for entry in (".venv", ".git", ".run", "**/__pycache__", ".pytest_cache"):
        assert entry in ignored, entry
