"""The OpenAPI 3.1 documents (taskbus/openapi/*.json) against the code and the running functions.

- each document is valid OpenAPI 3.1, every schema in it valid JSON Schema 2020-12, and it
  documents exactly the routes and methods the function's router has;
- each function serves its document at `GET /openapi.json`, unauthenticated, equal to the
  file with what its settings decide filled in (`MAX_WAIT_S`, the task defaults, `API_KEYS`);
- every test that runs the functions runs them on both serving paths (`SERVE_PATH`: `asgi`, the
  default, and `wsgi`);
- schemathesis runs every check against both functions (open, and with API keys and a
  webhook source) and the console (read-only without keys, and with admin keys), with a
  fixed seed and `SCHEMATHESIS_MAX_EXAMPLES` (default 10) cases per
  operation; a chaos run sets it (and `SCHEMATHESIS_PHASES`, `SCHEMATHESIS_KEYED_PHASES`,
  `SCHEMATHESIS_SEED`) larger;
- responses of real flows (queued, scheduled, running, succeeded, failed tasks, replays,
  webhooks, every error status, 503 with Redis down) match what the document says.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import hmac
import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
import schemathesis
from schemathesis.core.result import Err
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from local.embedded import free_port
from taskbus import openapi
from taskbus.http import console_api, enqueue_api, status_api
from taskbus.settings import Settings
from testkit.functions import function_pair
from testkit.procs import Proc, spawn, wait_until

FUNCTIONS = ("enqueue", "status")  # the pair the `functions` fixtures run
DOCUMENTS = (*FUNCTIONS, "console")
ADMIN_KEY = "openapi-admin-key"
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "10"))  # `make chaos`: 200
SEED = os.environ.get("SCHEMATHESIS_SEED", "1")
PHASES = os.environ.get("SCHEMATHESIS_PHASES", "examples,coverage,fuzzing")
# The keyed run is there for authentication (`ignored_auth` probes every accepted request without and
# with a wrong key) and for the settings filled into the document; its boundary cases are enough.
KEYED_PHASES = os.environ.get("SCHEMATHESIS_KEYED_PHASES", "examples,coverage")
OPTIONAL_AUTH: list[dict[str, list[str]]] = [{}, {"bearerAuth": []}]
API_KEY = "openapi-test-key"
GITHUB_SECRET = "openapi-test-secret"
KEYED_ENV = {"API_KEYS": API_KEY, "WEBHOOK_SOURCES": "github", "WEBHOOK_GITHUB_SECRET": GITHUB_SECRET}
# Operations schemathesis tests: all but GET /openapi.json, which it skips as the schema's own URL.
TESTED_OPERATIONS = {"enqueue": 8, "status": 4, "console": 23}  # each with its GET /metrics
# Statuses that count as refusing invalid input: schemathesis' default list, plus 413 and the refusals
# of gunicorn's limits (414, 431) that a long generated query string or header runs into.
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "414", "415", "422", "428", "429", "431",
              "5xx"]


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module", params=["asgi", "wsgi"])
def serving(request: pytest.FixtureRequest) -> str:
    """The serving path under test (`taskbus serve` with SERVE_PATH)."""
    return str(request.param)


@pytest.fixture(scope="module")
def served(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory, serving: str) -> Iterator[dict[str, str]]:
    with function_pair(base_settings, tmp_path_factory.mktemp(f"openapi-{serving}"),
                       env={"SERVE_PATH": serving}) as pair:
        yield pair.urls


@pytest.fixture
def functions(served: dict[str, str]) -> dict[str, str]:
    """This module's own pair on the serving path under test."""
    return served


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local `$ref` (components only) to the object it names."""
    while "$ref" in node and node["$ref"].startswith("#/components/") and len(node) == 1:
        _, _, kind, name = node["$ref"].split("/")
        node = doc["components"][kind][name]
    return node


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """A 2020-12 validator of `schema` whose `#/components/...` references resolve in `doc`."""
    root = {"$schema": "https://json-schema.org/draft/2020-12/schema", "allOf": [schema],
            "components": doc["components"]}
    return jsonschema_rs.validator_for(root, validate_formats=True)


def iter_schemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every Schema Object in a document: the values of `schema` keys and of components.schemas."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "schema" and isinstance(value, dict):
                yield value
            elif key == "schemas" and isinstance(value, dict):
                yield from value.values()
            else:
                yield from iter_schemas(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_schemas(item)


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def check_response(doc: dict[str, Any], path: str, method: str, response: httpx.Response) -> Any:
    """Assert that `response` is one the document gives for `method path`: a documented status,
    its required headers with valid values, and a JSON body valid against its schema."""
    responses = doc["paths"][path][method.lower()]["responses"]
    status = str(response.status_code)
    assert status in responses, (method, path, status, response.text[:500])
    return check_against(doc, resolve(doc, responses[status]), response, f"{method} {path} -> {status}")


def check_against(doc: dict[str, Any], spec: dict[str, Any], response: httpx.Response, label: str) -> Any:
    for name, header in spec.get("headers", {}).items():
        header = resolve(doc, header)
        value = response.headers.get(name)
        if header.get("required"):
            assert value is not None, (label, f"missing header {name}", dict(response.headers))
        if value is not None:
            schema = resolve(doc, header["schema"])
            typed: Any = int(value) if schema.get("type") == "integer" else value
            errors = [e.message for e in validator(doc, header["schema"]).iter_errors(typed)]
            assert not errors, (label, name, value, errors)
    content = spec.get("content")
    if not content:
        return None
    assert response.headers.get("content-type", "").split(";")[0] in content, (label, response.headers)
    body = response.json()
    errors = [f"{e.instance_path}: {e.message}" for e in
              validator(doc, content["application/json"]["schema"]).iter_errors(body)]
    assert not errors, (label, body, errors)
    return body


def answers_http(proc: Proc, base_url: str) -> bool:
    if proc.popen.poll() is not None:
        raise AssertionError(f"{proc.name} exited early:\n{proc.output()}")
    try:
        httpx.get(base_url + "/openapi.json", timeout=1)
        return True
    except httpx.HTTPError:
        return False


def start_pair(settings: Settings, log_dir: Path, **extra_env: str) -> tuple[list[Proc], dict[str, str]]:
    """Both functions under `settings` (+ env), up once they answer HTTP (not /healthz: Redis may be down)."""
    procs, urls = [], {}
    for name in FUNCTIONS:
        port = settings.enqueue_port if name == "enqueue" else settings.status_port
        procs.append(spawn(name, settings, log_dir, (), **extra_env))
        urls[name] = f"http://127.0.0.1:{port}"
    for proc in procs:
        wait_until(lambda proc=proc: answers_http(proc, urls[proc.name]), timeout=20,  # type: ignore[misc]
                   message=f"{proc.name} to answer HTTP")
    return procs, urls


def fresh_ports(settings: Settings, **changes: Any) -> Settings:
    status_port = free_port()
    return dataclasses.replace(settings, enqueue_port=free_port(), status_port=status_port,
                               status_base_url=f"http://127.0.0.1:{status_port}", **changes)


# Console operations whose valid input may still be refused by what a schema cannot say: a purge's
# `confirm` must equal the path's queue, a cursor must be one the console returned.
CONSOLE_422_OPERATIONS = ("purgeQueue", "listTasks")
ACCEPTANCE = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # schemathesis' default list


def run_schemathesis(urls: dict[str, str], cwd: Path, *extra: str, phases: str = PHASES) -> None:
    """Run the schemathesis CLI with every check against each function in `urls`, at the same
    time; fail with the output of each run that found something."""
    config = cwd / "schemathesis.toml"
    text = f"[checks.negative_data_rejection]\nexpected-statuses = {json.dumps(REJECTIONS)}\n"
    for operation_id in CONSOLE_422_OPERATIONS:
        text += (f'\n[[operations]]\ninclude-operation-id = "{operation_id}"\n'
                 f"checks.positive_data_acceptance.expected-statuses = {json.dumps([*ACCEPTANCE, '422'])}\n")
    config.write_text(text)
    runs = {}
    for name, base_url in urls.items():
        argv = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
                f"{base_url}/openapi.json", "--url", base_url,
                "--checks", "all", "--seed", SEED, "--max-examples", str(MAX_EXAMPLES), "--phases", phases,
                "--generation-database", "none", "--request-timeout", "10", "--no-color", *extra]
        runs[name] = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env={**os.environ, "COLUMNS": "120"})
    failed = []
    try:
        for name, proc in runs.items():
            output, _ = proc.communicate(timeout=3600)
            if proc.returncode != 0:
                failed.append(f"===== schemathesis on the {name} function: exit {proc.returncode}\n{output[-25000:]}")
                continue
            count = TESTED_OPERATIONS[name]
            assert re.search(rf"Operations:\s+{count} selected / {count} total", output), output[-3000:]
            assert re.search(rf"Tested: {count}\b", output), output[-3000:]
            print(f"schemathesis {name}: " + " | ".join(line.strip() for line in output.splitlines()
                                                        if re.search(r"generated|Scenarios", line)))
    finally:
        for proc in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()  # else a later test's collection warns of it (warnings are errors)
    if failed:
        pytest.fail("\n".join(failed), pytrace=False)


# --------------------------------------------------------------------------- the documents themselves


@pytest.mark.parametrize("name", DOCUMENTS)
def test_document_is_valid_openapi_3_1(name: str) -> None:
    doc = openapi.load(name)
    assert doc["openapi"].startswith("3.1.")
    assert doc["servers"] == [{"url": "/"}]
    OPENAPI_31_VALIDATOR.validate(doc)
    for schema in iter_schemas(doc):
        jsonschema_rs.meta.validate(schema)
        validator(doc, schema)  # compiles: every reference resolves, every pattern is a valid regex
    ids = [operation["operationId"] for _, _, operation in operations(doc)]
    assert len(ids) == len(set(ids)), ids
    loaded = schemathesis.openapi.from_dict(doc)
    loaded.validate()
    problems = [str(result.err()) for result in loaded.get_all_operations() if isinstance(result, Err)]
    assert problems == []


@pytest.mark.parametrize("name", DOCUMENTS)
def test_document_has_exactly_the_routes_of_the_function(name: str) -> None:
    service = {"enqueue": enqueue_api, "status": status_api, "console": console_api}[name].make_service(Settings())
    service.close()  # only its router is looked at
    routed: set[tuple[str, str]] = set()
    for rule in service.routes.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        routed |= {(path, method.lower()) for method in rule.methods or () if method != "HEAD"}
        # every route of an endpoint that needs API_KEYS says so; the others are open
        for method in rule.methods or ():
            if method != "HEAD":
                security = openapi.load(name)["paths"][path][method.lower()]["security"]
                assert security == (OPTIONAL_AUTH if rule.endpoint in service.keyed else []), (path, method)
    doc = openapi.load(name)
    documented = {(path, method) for path, method, _ in operations(doc)}
    # The router answers a path with or without its trailing slash; the blog's `/enqueue/` is documented too.
    assert {(path.rstrip("/") or "/", method) for path, method in documented} == routed


def test_document_follows_the_settings() -> None:
    plain = openapi.document("status", Settings())
    assert plain == openapi.load("status")
    assert openapi.document("enqueue", Settings()) == openapi.load("enqueue")
    changed = Settings(max_wait_s=2.5, api_keys=("k",), default_max_attempts=3, default_timeout_s=1.5)
    for name in FUNCTIONS:
        served = openapi.document(name, changed)
        assert served == expected_document(name, max_wait_s=2.5, keyed=True, max_attempts=3, timeout_s=1.5)
        assert openapi.document(name, Settings(default_timeout_s=30.0)) == expected_document(name, timeout_s=30)
    # the console's operations are guarded by ADMIN_KEYS, not API_KEYS
    assert openapi.document("console", Settings()) == openapi.load("console")
    assert openapi.document("console", changed) == openapi.load("console")
    assert openapi.document("console", Settings(admin_keys=(("a", "k"),))) == expected_document("console", keyed=True)
    assert openapi.document("enqueue", Settings(admin_keys=(("a", "k"),))) == openapi.load("enqueue")


def expected_document(name: str, max_wait_s: float = 60, keyed: bool = False, max_attempts: int = 5,
                      timeout_s: float = 300) -> dict[str, Any]:
    """The file with what the settings decide filled in, written out independently of taskbus.openapi."""
    doc = copy.deepcopy(openapi.load(name))
    if name == "status":
        doc["components"]["parameters"]["Wait"]["schema"]["maximum"] = max_wait_s
    elif name == "enqueue":
        fields = doc["components"]["schemas"]["TaskSpec"]["properties"]
        fields["max_attempts"]["default"], fields["timeout_s"]["default"] = max_attempts, timeout_s
    if keyed:
        for path, _, operation in operations(doc):
            if operation["security"] == OPTIONAL_AUTH and path != "/metrics":  # open to loopback whatever the keys
                operation["security"] = [{"bearerAuth": []}]
    return doc


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_function_serves_its_document(functions: dict[str, str], name: str) -> None:
    response = httpx.get(functions[name] + "/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == openapi.load(name)
    check_response(openapi.load(name), "/openapi.json", "GET", response)


# --------------------------------------------------------------------------- schemathesis


@pytest.mark.timeout(300)  # a fixed number of cases per operation: 25-50 s here alone, more on a loaded host
def test_schemathesis_finds_nothing(functions: dict[str, str], tmp_path: Path) -> None:
    run_schemathesis(functions, tmp_path)


@pytest.fixture(scope="module")
def keyed_functions(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory,
                    serving: str) -> Iterator[dict[str, str]]:
    """Both functions with API_KEYS, a `github` webhook source, MAX_WAIT_S=1 and BODY_TIMEOUT_S=0.5."""
    settings = fresh_ports(base_settings, max_wait_s=1.0, key_prefix="tbk", body_timeout_s=0.5)
    procs, urls = start_pair(settings, tmp_path_factory.mktemp("keyed"), **KEYED_ENV, SERVE_PATH=serving)
    try:
        yield urls
    finally:
        for proc in procs:
            proc.kill()


@pytest.mark.parametrize("name", FUNCTIONS)
def test_keyed_functions_serve_their_settings(keyed_functions: dict[str, str], name: str) -> None:
    response = httpx.get(keyed_functions[name] + "/openapi.json", timeout=10)  # open, even with API_KEYS
    assert response.status_code == 200
    assert response.json() == expected_document(name, max_wait_s=1, keyed=True)


@pytest.mark.timeout(300)  # a fixed number of cases per operation: 25-50 s here alone, more on a loaded host
def test_schemathesis_finds_nothing_with_api_keys(keyed_functions: dict[str, str], tmp_path: Path) -> None:
    run_schemathesis(keyed_functions, tmp_path, "--header", f"Authorization: Bearer {API_KEY}", phases=KEYED_PHASES)


# --------------------------------------------------------------------------- the console


CONSOLE_ENVS = {"read_only": {"CONSOLE_READ_ONLY": "true"}, "keyed": {"ADMIN_KEYS": f"ops:{ADMIN_KEY}"}}


def start_consoles(settings: Settings, log_dir: Path, serving: str, *names: str) -> tuple[list[Proc], dict[str, str]]:
    """Consoles of `CONSOLE_ENVS` under `settings` on fresh ports, up once they answer HTTP."""
    procs, urls = [], {}
    for name in names:
        own = dataclasses.replace(settings, console_port=free_port())
        procs.append(spawn("console", own, log_dir, (), SERVE_PATH=serving, WEB_WORKERS="1", **CONSOLE_ENVS[name]))
        urls[name] = f"http://127.0.0.1:{own.console_port}"
    for proc, url in zip(procs, urls.values()):
        wait_until(lambda proc=proc, url=url: answers_http(proc, url), timeout=20,  # type: ignore[misc]
                   message="the console to answer HTTP")
    return procs, urls


@pytest.fixture(scope="module")
def consoles(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory,
             serving: str) -> Iterator[dict[str, str]]:
    """Two consoles on the session's settings: `read_only` (CONSOLE_READ_ONLY, no keys: open
    reads) and `keyed` (ADMIN_KEYS: every action runs)."""
    procs, urls = start_consoles(base_settings, tmp_path_factory.mktemp(f"openapi-console-{serving}"), serving,
                                 "read_only", "keyed")
    try:
        yield urls
    finally:
        for proc in procs:
            proc.kill()


@pytest.fixture(scope="module")
def fuzzed_console(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A keyed console on a key prefix of its own (schemathesis pauses, purges and re-drives)."""
    settings = dataclasses.replace(base_settings, key_prefix="tbc")
    procs, urls = start_consoles(settings, tmp_path_factory.mktemp("openapi-console-fuzzed"), "asgi", "keyed")
    try:
        yield urls["keyed"]
    finally:
        for proc in procs:
            proc.kill()


def test_each_console_serves_its_document(consoles: dict[str, str]) -> None:
    response = httpx.get(consoles["read_only"] + "/openapi.json", timeout=10)
    assert response.status_code == 200 and response.json() == openapi.load("console")
    response = httpx.get(consoles["keyed"] + "/openapi.json", timeout=10)  # open, even with ADMIN_KEYS
    assert response.status_code == 200 and response.json() == expected_document("console", keyed=True)


@pytest.mark.timeout(300)  # a fixed number of cases per operation: 25-50 s here alone, more on a loaded host
def test_schemathesis_finds_nothing_on_the_console(fuzzed_console: str, tmp_path: Path) -> None:
    """The keyed console, where every action runs (and `ignored_auth` probes each without and with
    a wrong key), once, on the default serving path: the console's routes share the adapters and
    their refusals with the other two functions, which schemathesis runs on both paths. The
    read-only console's answers are checked against the document by the real-answers test below."""
    run_schemathesis({"console": fuzzed_console}, tmp_path, "--header", f"Authorization: Bearer {ADMIN_KEY}",
                     phases=KEYED_PHASES)


def test_real_console_answers_match_its_document(consoles: dict[str, str], functions: dict[str, str]) -> None:
    """A queued task through the console: listed, shown, cancelled, cancelled again (409), and
    the refusals (401, 403, 404, 405, 422), each against the document."""
    doc, base = expected_document("console", keyed=True), consoles["keyed"]
    queue = f"openapi-{uuid.uuid4().hex[:8]}"
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(timeout=30, headers=auth) as http:
        created = http.post(functions["enqueue"] + "/tasks", json={"type": "echo", "queue": queue,
                                                                   "payload": {"n": 1}}, headers={})
        assert created.status_code == 202, created.text
        task_id = created.json()["id"]

        def check(path: str, method: str, template: str, status: int, **kwargs: Any) -> Any:
            response = http.request(method, base + path, **kwargs)
            assert response.status_code == status, (path, response.text)
            return check_response(doc, template, method, response)

        # the enqueue function shares the session's key prefix, so the console on `tbc` sees no task:
        # it is read through a console on the same prefix below; here the shapes of everything else
        missing = f"{queue}~{uuid.uuid4().hex}"
        check("/api/queues", "GET", "/api/queues", 200)
        check(f"/api/queues/{queue}", "GET", "/api/queues/{queue}", 200)
        check(f"/api/queues/{queue}/tasks?state=queued", "GET", "/api/queues/{queue}/tasks", 200)
        check(f"/api/queues/{queue}/tasks?state=nope", "GET", "/api/queues/{queue}/tasks", 422)
        check(f"/api/tasks/{missing}", "GET", "/api/tasks/{task_id}", 404)
        check(f"/api/tasks/{missing}:cancel", "POST", "/api/tasks/{task_id}:cancel", 404)
        check(f"/api/queues/{queue}:pause", "POST", "/api/queues/{queue}:pause", 200)
        check(f"/api/queues/{queue}:resume", "POST", "/api/queues/{queue}:resume", 200)
        check(f"/api/queues/{queue}:purge", "POST", "/api/queues/{queue}:purge", 422, json={"state": "dead"})
        check(f"/api/queues/{queue}:purge", "POST", "/api/queues/{queue}:purge", 200,
              json={"state": "dead", "confirm": queue})
        check(f"/api/queues/{queue}/redrives", "POST", "/api/queues/{queue}/redrives", 200, json={"dry_run": True})
        job = check(f"/api/queues/{queue}/redrives", "POST", "/api/queues/{queue}/redrives", 201, json={"rate": 5})
        check(f"/api/redrives/{job['id']}", "GET", "/api/redrives/{redrive_id}", 200)
        check(f"/api/queues/{queue}/redrives", "GET", "/api/queues/{queue}/redrives", 200)
        check("/api/workers", "GET", "/api/workers", 200)
        check("/healthz", "GET", "/healthz", 200)
        check("/api/queues", "GET", "/api/queues", 401, headers={"Authorization": "Bearer wrong"})
        response = http.get(base + f"/api/queues/{queue}:pause")
        assert response.status_code == 405
        check_against(doc, doc["components"]["responses"]["MethodNotAllowed"], response, "GET :pause")
        read_only = http.post(consoles["read_only"] + f"/api/tasks/{task_id}:cancel")
        assert read_only.status_code == 403
        check_response(openapi.load("console"), "/api/tasks/{task_id}:cancel", "POST", read_only)

    enq = openapi.load("enqueue")
    with httpx.Client(timeout=30) as http:  # the enqueue function's cancel, on the same task
        for status in (200, 409):
            response = http.post(functions["enqueue"] + f"/tasks/{task_id}:cancel")
            assert response.status_code == status, response.text
            check_response(enq, "/tasks/{task_id}:cancel", "POST", response)
        response = http.post(functions["enqueue"] + f"/tasks/{queue}~{uuid.uuid4().hex}:cancel")
        assert response.status_code == 404
        check_response(enq, "/tasks/{task_id}:cancel", "POST", response)


# --------------------------------------------------------------------------- real flows


JSON = {"Content-Type": "application/json"}


def test_real_task_lifecycle_matches_the_documents(functions: dict[str, str], queue: str,
                                                   workers: Callable[..., Proc]) -> None:
    enq, sta = openapi.load("enqueue"), openapi.load("status")
    base, status_base = functions["enqueue"], functions["status"]
    with httpx.Client(timeout=30) as http:
        def create(**fields: Any) -> httpx.Response:
            return http.post(base + "/tasks", json={"queue": queue, **fields})

        def view(task_id: str, route: str = "/tasks/{task_id}", wait: float = 0) -> dict[str, Any]:
            url = status_base + route.replace("{task_id}", task_id) + (f"?wait={wait}" if wait else "")
            return check_response(sta, route, "GET", http.get(url))  # type: ignore[no-any-return]

        def task_id(response: httpx.Response, status: int = 202) -> str:
            assert response.status_code == status, response.text
            return str(check_response(enq, "/tasks", "POST", response)["id"])

        echo = task_id(create(type="echo", payload={"hello": ["world", 1, 2.5, None]}))
        key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
        failing = task_id(http.post(base + "/tasks", headers=key,
                                    json={"type": "fail", "queue": queue, "max_attempts": 1}))
        assert task_id(http.post(base + "/tasks", headers=key, json={"type": "fail", "queue": queue}), 200) == failing
        slow = task_id(create(type="sleep", payload={"seconds": 2}, timeout_s=30))
        scheduled = task_id(create(type="echo", delay_s=3600))
        batch_key = f"b-{uuid.uuid4()}"
        items = [{"type": "echo", "queue": queue, "idempotency_key": batch_key}, {"type": "bad type!"}, 7,
                 {"type": "echo", "queue": queue, "idempotency_key": batch_key}]
        batch = http.post(base + "/tasks/batch", json={"tasks": items})
        assert batch.status_code == 200, batch.text
        results = check_response(enq, "/tasks/batch", "POST", batch)["results"]
        assert [sorted(result) for result in results] == [["id", "status", "status_url"], ["error"], ["error"],
                                                          ["id", "status", "status_url"]], results
        assert results[0]["id"] == results[3]["id"]
        for path in ("/enqueue", "/enqueue/"):
            legacy_key = {"Idempotency-Key": f"legacy-{uuid.uuid4()}"}
            first = http.post(base + path, json={"marker": uuid.uuid4().hex}, headers=legacy_key)
            again = http.post(base + path, json={}, headers=legacy_key)
            assert (first.status_code, again.status_code) == (202, 200)
            check_response(enq, path, "POST", first)
            check_response(enq, path, "POST", again)

        assert view(echo)["status"] == "queued"
        assert view(scheduled, "/task/{task_id}")["status"] == "scheduled"
        workers()
        wait_until(lambda: view(slow)["status"] == "running", timeout=20, message="the sleep task to run")
        done = view(echo, wait=20)
        assert (done["status"], done["result"], done["error"]) == ("succeeded", {"hello": ["world", 1, 2.5, None]},
                                                                    None)
        failed = view(failing, wait=20)
        assert failed["status"] == "failed" and failed["error"]["type"] == "RuntimeError", failed
        assert view(slow, wait=20)["status"] == "succeeded"


def test_real_errors_match_the_documents(functions: dict[str, str], queue: str) -> None:
    enq, sta = openapi.load("enqueue"), openapi.load("status")
    base, status_base = functions["enqueue"], functions["status"]
    with httpx.Client(timeout=30) as http:
        cases = [
            (http.post(base + "/tasks", content=b"{", headers=JSON), 400),
            (http.post(base + "/tasks", content=b"{}", headers={"Content-Type": "text/plain"}), 415),
            (http.post(base + "/tasks", json={"type": "t", "queue": queue, "delay_s": -1}), 422),
            (http.post(base + "/tasks", json={"type": "t", "queue": queue}, headers={"Idempotency-Key": "k" * 256}),
             422),
            (http.post(base + "/enqueue/", json=[1]), 422),
            (http.post(base + "/tasks", content=b" " * (1024 * 1024 + 1), headers=JSON), 413),
            (http.post(base + "/hooks/nope", content=b"{}", headers=JSON), 404),
        ]
        for response, status in cases:
            assert response.status_code == status, response.text
            check_response(enq, str(response.request.url.path).replace("/nope", "/{source}"), "POST", response)
        missing = f"{queue}~{uuid.uuid4().hex}"
        for path, status in ((f"/tasks/{missing}", 404), (f"/task/{missing}?wait=0.1", 404), ("/tasks/nope", 404),
                             (f"/tasks/{missing}?wait=61", 422), (f"/tasks/{missing}?wait=abc", 422)):
            response = http.get(status_base + path)
            assert response.status_code == status, (path, response.text)
            check_response(sta, "/tasks/{task_id}", "GET", response)
        for name, url, method, path in (("enqueue", base, "GET", "/tasks"), ("enqueue", base, "DELETE", "/healthz"),
                                        ("status", status_base, "POST", f"/tasks/{missing}")):
            doc = openapi.load(name)
            response = http.request(method, url + path)
            assert response.status_code == 405, response.text
            check_against(doc, doc["components"]["responses"]["MethodNotAllowed"], response, f"{method} {path}")
        for name in FUNCTIONS:
            doc = openapi.load(name)
            check_response(doc, "/healthz", "GET", http.get(functions[name] + "/healthz"))


def test_real_webhooks_and_api_keys_match_the_documents(keyed_functions: dict[str, str]) -> None:
    enq, sta = expected_document("enqueue", keyed=True), expected_document("status", 1, keyed=True)
    base = keyed_functions["enqueue"]
    auth = {"Authorization": f"Bearer {API_KEY}"}

    def delivery(event: str, delivery_id: str, body: bytes, secret: str = GITHUB_SECRET) -> dict[str, str]:
        signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return {**JSON, "X-GitHub-Event": event, "X-GitHub-Delivery": delivery_id,
                "X-Hub-Signature-256": f"sha256={signature}"}

    with httpx.Client(timeout=30) as http:
        unauthorized = http.post(base + "/tasks", json={"type": "t"})
        assert unauthorized.status_code == 401
        check_response(enq, "/tasks", "POST", unauthorized)
        unauthorized = http.get(keyed_functions["status"] + f"/tasks/q~{uuid.uuid4().hex}")
        assert unauthorized.status_code == 401
        check_response(sta, "/tasks/{task_id}", "GET", unauthorized)
        created = http.post(base + "/tasks", json={"type": "t", "queue": "openapi-keyed"}, headers=auth)
        assert created.status_code == 202
        check_response(enq, "/tasks", "POST", created)

        body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
        push = json.dumps({"ref": "refs/heads/main", "commits": []}).encode()
        push_id = str(uuid.uuid4())
        hooks = [
            (delivery("ping", str(uuid.uuid4()), body), body, 200),
            (delivery("push", push_id, push), push, 202),
            (delivery("push", push_id, push), push, 200),
            (delivery("push", str(uuid.uuid4()), push, secret="wrong"), push, 401),
            ({**delivery("push", str(uuid.uuid4()), b"{"), "Content-Type": "application/json"}, b"{", 400),
            ({**delivery("push", str(uuid.uuid4()), push), "Content-Type": "text/plain"}, push, 415),
        ]
        for headers, content, status in hooks:
            response = http.post(base + "/hooks/github", content=content, headers=headers)
            assert response.status_code == status, (status, response.text)
            check_response(enq, "/hooks/{source}", "POST", response)

    # a body that stops arriving: 408 once BODY_TIMEOUT_S (0.5 s here) has passed
    for path, template in (("/tasks", "/tasks"), ("/tasks/batch", "/tasks/batch"),
                           ("/hooks/github", "/hooks/{source}")):
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{".encode())
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        response = httpx.Response(int(lines[0].split()[1]), headers=headers, content=body)
        assert response.status_code == 408, (path, raw[:300])
        check_response(enq, template, "POST", response)


@pytest.fixture(scope="module")
def dead_redis_functions(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory,
                         serving: str) -> Iterator[dict[str, str]]:
    settings = fresh_ports(base_settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    procs, urls = start_pair(settings, tmp_path_factory.mktemp("openapi-dead-redis"), SERVE_PATH=serving)
    try:
        yield urls
    finally:
        for proc in procs:
            proc.kill()


def test_real_503_matches_the_documents(dead_redis_functions: dict[str, str]) -> None:
    enq, sta = openapi.load("enqueue"), openapi.load("status")
    base, status_base = dead_redis_functions["enqueue"], dead_redis_functions["status"]
    with httpx.Client(timeout=10) as http:
        requests = [
            (enq, "/healthz", "GET", http.get(base + "/healthz")),
            (enq, "/tasks", "POST", http.post(base + "/tasks", json={"type": "t", "queue": "openapi-dead"})),
            (enq, "/enqueue/", "POST", http.post(base + "/enqueue/", json={})),
            (sta, "/healthz", "GET", http.get(status_base + "/healthz")),
            (sta, "/tasks/{task_id}", "GET", http.get(status_base + f"/tasks/q~{uuid.uuid4().hex}")),
        ]
        for doc, path, method, response in requests:
            assert response.status_code == 503, (path, response.text)
            check_response(doc, path, method, response)
