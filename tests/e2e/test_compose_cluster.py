"""docker-compose.yml's `cluster` profile: six Redis Cluster nodes, the one-shot service that forms
them into 3 masters + 3 replicas, and a REDIS_CLUSTER=true twin of enqueue, status and worker.
No Docker engine here: the file is parsed and checked against the settings, the command table and
the local runner's cluster (local/cluster.py), and the init service's own shell script is run, with
the machine's redis-cli, against six real embedded nodes started with the compose nodes' flags."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from local.cluster import NODE_TIMEOUT_MS, Node
from local.embedded import binary, free_port, spawn_logged
from local.stack import CLUSTER_NODES
from taskbus.state.client import cluster_url
from testkit.procs import wait_until
from tests.e2e.test_compose import (
    FIELD_ENV_NAMES,
    command_list,
    compose,
    container_settings,
    depends_on,
    environment,
    profiles,
    published_ports,
    service,
)

PROFILE = "cluster"
INIT = "redis-cluster-init"
NODES = tuple(f"redis-node-{i}" for i in range(CLUSTER_NODES))
CLUSTER_FUNCTIONS = {"enqueue-cluster": "enqueue", "status-cluster": "status", "worker-cluster": "worker"}
TWIN_DIFFERENCES = {"profiles", "environment", "depends_on", "ports"}


def flags(argv: list[str]) -> dict[str, str]:
    """`--name value` pairs of a server command line."""
    return {argv[i][2:]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}


def init_script() -> str:
    command = command_list(service(INIT)["command"])
    assert command[:2] == ["sh", "-c"] and len(command) == 3, f"{INIT}: a `sh -c` one-liner"
    return command[2]


def create_args() -> list[str]:
    """The arguments of the script's `redis-cli --cluster create`."""
    words = shlex.split(init_script().replace(";", " ; "))
    start = next(i for i in range(len(words) - 2) if words[i:i + 3] == ["redis-cli", "--cluster", "create"])
    end = next((i for i in range(start, len(words)) if words[i] in (";", "||", "&&")), len(words))
    return words[start + 3:end]


def test_the_cluster_profile_is_six_nodes_their_init_and_a_cluster_twin_of_three_functions() -> None:
    in_profile = {name for name in compose()["services"] if PROFILE in profiles(name)}
    assert in_profile == {*NODES, INIT, *CLUSTER_FUNCTIONS}
    assert all(profiles(name) == [PROFILE] for name in in_profile), "in the cluster profile only"


@pytest.mark.parametrize("name", NODES)
def test_each_node_is_the_redis_image_as_a_cluster_node_flagged_like_the_local_one(name: str) -> None:
    node = service(name)
    assert node.get("image") == service("redis")["image"] and "build" not in node
    argv = command_list(node["command"])
    assert argv[0] == "redis-server"
    mine = flags(argv)
    local = flags(Node(1, 2, Path("/x")).argv())  # `make up` LOCAL_CLUSTER=true's node
    for flag in ("cluster-enabled", "cluster-node-timeout", "appendonly", "appendfsync"):
        assert mine[flag] == local[flag], f"{name}: --{flag} {mine[flag]} (the local cluster's: {local[flag]})"
    assert mine["cluster-node-timeout"] == str(NODE_TIMEOUT_MS)
    assert mine["cluster-announce-hostname"] == name and mine["cluster-preferred-endpoint-type"] == "hostname"
    assert mine["cluster-config-file"].startswith(mine["dir"] + "/"), "nodes.conf must persist with the data"
    volumes = [str(v).split(":") for v in node.get("volumes") or []]
    named = [parts[0] for parts in volumes if parts[1:2] == [mine["dir"]]]
    assert named and named[0] in (compose().get("volumes") or {}), f"{name}: {mine['dir']} must be a named volume"
    assert command_list(node["healthcheck"]["test"]) == ["CMD", "redis-cli", "ping"]


def test_the_init_service_creates_the_cluster_from_every_node_with_one_replica_each() -> None:
    init = service(INIT)
    assert init.get("image") == service("redis")["image"] and init.get("restart") == "no"
    assert set(depends_on(INIT)) == set(NODES)
    assert all(depends_on(INIT)[n].get("condition") == "service_healthy" for n in NODES)
    args = create_args()
    addresses = [a for a in args if not a.startswith("--") and a != "1"]
    assert addresses == [f"{n}:{flags(command_list(service(n)['command']))['port']}" for n in NODES]
    assert args[args.index("--cluster-replicas") + 1] == "1" and "--cluster-yes" in args
    assert len(NODES) == 2 * 3, "3 masters + 3 replicas, as LOCAL_CLUSTER=true"


@pytest.mark.parametrize("name", CLUSTER_FUNCTIONS)
def test_a_cluster_function_is_its_twin_but_for_environment_dependencies_and_ports(name: str) -> None:
    mine, default = service(name), service(CLUSTER_FUNCTIONS[name])
    same = (set(mine) | set(default)) - TWIN_DIFFERENCES
    assert {key: mine.get(key) for key in same} == {key: default.get(key) for key in same}
    assert depends_on(name) == {INIT: {"condition": "service_completed_successfully"}}


@pytest.mark.parametrize("name", CLUSTER_FUNCTIONS)
def test_a_cluster_function_reaches_the_cluster_through_its_nodes(name: str) -> None:
    env = environment(name)
    assert not set(env) - FIELD_ENV_NAMES, f"{name}: not fields of Settings: {set(env) - FIELD_ENV_NAMES}"
    settings = container_settings(name)
    assert settings.cluster and env["REDIS_CLUSTER"] == "true"
    first, seeds = cluster_url(settings)
    hosts = [urlsplit(first).hostname, *(host for host, _ in seeds)]
    assert set(hosts) <= set(NODES) and len(hosts) >= 2, f"{name}: seed nodes {hosts} (more than one: any may be down)"
    twin = CLUSTER_FUNCTIONS[name]
    if twin != "worker":
        port = int(getattr(settings, f"{twin}_port"))
        assert [target for _, target in published_ports(name)] == [port]


def test_the_cluster_functions_publish_ports_of_their_own_and_link_to_each_other() -> None:
    published = [host for name in compose()["services"] for host, _ in published_ports(name)]
    assert len(published) == len(set(published)), f"a host port published twice: {sorted(published)}"
    status_base = environment("enqueue-cluster")["STATUS_BASE_URL"]
    assert status_base == f"http://localhost:{published_ports('status-cluster')[0][0]}"


@pytest.mark.timeout(90)
def test_the_init_script_forms_a_3_plus_3_cluster_of_real_nodes_and_a_second_run_keeps_it(tmp_path: Path) -> None:
    """The init service's script and the nodes' flags, on six embedded Valkey nodes (hostnames
    and ports mapped to this machine's): one run forms 3 masters + 3 replicas with all slots, a
    second run (a later `docker compose up`) leaves that cluster as it is and succeeds."""
    assert shutil.which("redis-cli"), "redis-cli is missing: `make tools` installs it (Debian's redis-tools)"
    ports = {name: free_port() for name in NODES}
    procs = []
    try:
        for name in NODES:
            argv = command_list(service(name)["command"])
            data = tmp_path / name
            data.mkdir()
            mapped = [binary(), *(_local_value(part, name, data, ports) for part in argv[1:]),
                      "--cluster-port", str(free_port()), "--bind", "127.0.0.1", "--save", ""]
            procs.append(spawn_logged(mapped, data / "server.log"))
        clients = {n: redis.Redis(port=p, decode_responses=True, socket_timeout=5) for n, p in ports.items()}
        wait_until(lambda: all(_answers(c) for c in clients.values()), timeout=20, message="six nodes up")
        script = init_script().replace("-h redis-node-0", f"-h 127.0.0.1 -p {ports[NODES[0]]}")
        for name, port in ports.items():
            script = script.replace(f"{name}:6379", f"127.0.0.1:{port}")
        first = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
        roles = _roles(clients[NODES[0]])
        assert sorted(roles.values()) == ["master"] * 3 + ["slave"] * 3, roles
        assert clients[NODES[0]].cluster("info")["cluster_slots_assigned"] == "16384"
        again = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        assert _roles(clients[NODES[0]]) == roles, "a second run must keep the cluster formed by the first"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def _local_value(part: str, name: str, data: Path, ports: dict[str, int]) -> str:
    """A compose node's argument as this machine runs it: its own port and data directory."""
    if part == "6379":
        return str(ports[name])
    if part.startswith("/data"):
        return str(data) + part.removeprefix("/data")
    return "localhost" if part == name else part


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _roles(client: redis.Redis) -> dict[str, str]:
    """Node id -> master or slave, from CLUSTER NODES."""
    lines = str(client.execute_command("CLUSTER", "NODES")).strip().splitlines()
    return {line.split()[0]: "master" if "master" in line.split()[2] else "slave" for line in lines}
