"""The console function in process, on both serving paths, against the session's real Valkey:
admin-key refusals and the actor label, CONSOLE_READ_ONLY, the 404/405/422 shapes, paging
parameters, purge confirmation, payload redaction, the dashboard's static files (types, CSP,
no traversal), and a few operations end to end through HTTP (cancel twice, retry a failed task,
a re-drive's dry run and job). The operations' own behaviour is tested with the core."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from local.embedded import free_port
from taskbus.http.static import CSP, StaticFiles
from taskbus.redact import MASK, redact
from taskbus.settings import Settings
from testkit.procs import Proc, wait_until
from tests.http.conftest import Api, Built, build_app, client_of, close
from tests.http.helpers import create_id

ALICE = "alice-secret-key"
BOB = "bob-secret-key"
ADMIN_KEYS = f"alice:{ALICE},bob:{BOB}"
AS_ALICE = {"Authorization": f"Bearer {ALICE}"}
AS_BOB = {"Authorization": f"Bearer {BOB}"}
REDACT = ("card.number", "password", "items.secret")


@pytest.fixture(scope="module")
def make_console(base_settings: Settings, serving: str) -> Iterator[Callable[..., Any]]:
    """`make_console(admin_keys=ADMIN_KEYS, **settings changes)`: a console client on the serving
    path under test; its service is `client.built.module.service`."""
    built: list[Built] = []
    entered: list[Any] = []

    def make(admin_keys: str = ADMIN_KEYS, **changes: Any) -> Any:
        pairs = tuple(tuple(entry.split(":", 1)) for entry in admin_keys.split(",") if entry)
        settings = dataclasses.replace(base_settings, admin_keys=pairs, **changes)
        one = build_app("console", settings, serving, **({"ADMIN_KEYS": admin_keys} if admin_keys else {}))
        built.append(one)
        client = client_of(one, serving, entered)
        client.built = one
        return client

    yield make
    for client in entered:
        client.__exit__(None, None, None)
    for one in built:
        close(one)


@pytest.fixture(scope="module")
def console(make_console: Callable[..., Any]) -> Any:
    return make_console(console_redact=REDACT)


@pytest.fixture(scope="module")
def app_api(make_api: Callable[..., Api]) -> Api:
    """The enqueue and status functions (open: no API_KEYS)."""
    return make_api()


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/json")
    error: dict[str, Any] = response.json["error"]
    assert error["code"] == code and error["message"], error
    return error


# --------------------------------------------------------------------------- keys and the actor


def test_every_api_route_needs_an_admin_key(console: Any, queue: str) -> None:
    task = f"{queue}~{uuid.uuid4().hex}"
    for method, path in (("GET", "/api/queues"), ("GET", f"/api/queues/{queue}"),
                         ("GET", f"/api/queues/{queue}/tasks?state=queued"), ("GET", f"/api/tasks/{task}"),
                         ("POST", f"/api/tasks/{task}:cancel"), ("POST", f"/api/queues/{queue}:pause"),
                         ("GET", "/api/workers"), ("GET", f"/api/queues/{queue}/redrives")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ALICE}"},
                        {"Authorization": ALICE}):
            response = console.open(path, method=method, headers=headers)
            error_of(response, 401, "unauthorized")
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="taskbus"'
    assert console.get("/api/queues", headers=AS_ALICE).status_code == 200
    assert console.get("/api/queues", headers=AS_BOB).status_code == 200
    for path in ("/healthz", "/openapi.json"):  # open, as on the other functions
        assert console.get(path).status_code == 200, path


def test_the_matched_keys_label_is_the_actor(console: Any, app_api: Api, queue: str) -> None:
    task_id = create_id(app_api.enqueue, queue)
    assert console.post(f"/api/tasks/{task_id}:cancel", headers=AS_BOB).status_code == 200
    paused = console.post(f"/api/queues/{queue}:pause", headers=AS_ALICE)
    assert paused.status_code == 200, paused.text
    assert paused.json["paused"] is True and paused.json["paused_by"] == "alice"
    detail = console.get(f"/api/tasks/{task_id}", headers=AS_ALICE).json
    assert [(entry["actor"], entry["action"]) for entry in detail["audit"]][-1:] == [("bob", "cancel")], detail
    resumed = console.post(f"/api/queues/{queue}:resume", headers=AS_ALICE)
    assert resumed.status_code == 200 and resumed.json["paused"] is False


# --------------------------------------------------------------------------- read-only


def test_a_read_only_console_refuses_every_action_and_still_reads(make_console: Callable[..., Any],
                                                                  app_api: Api, queue: str) -> None:
    console = make_console(console_read_only=True)
    task_id = create_id(app_api.enqueue, queue)
    actions = [f"/api/tasks/{task_id}:cancel", f"/api/tasks/{task_id}:retry", f"/api/queues/{queue}:pause",
               f"/api/queues/{queue}:resume", f"/api/queues/{queue}:purge", f"/api/queues/{queue}/redrives",
               f"/api/redrives/{queue}~{uuid.uuid4().hex}:cancel"]
    for path in actions:
        error_of(console.post(path, json={"state": "queued", "confirm": queue}, headers=AS_ALICE), 403, "read_only")
        error_of(console.post(path), 401, "unauthorized")  # the key is checked first
    assert console.get(f"/api/tasks/{task_id}", headers=AS_ALICE).json["status"] == "queued"  # nothing changed
    assert console.get(f"/api/queues/{queue}", headers=AS_ALICE).json["paused"] is False


def test_a_read_only_console_without_keys_is_open_for_reads_only(make_console: Callable[..., Any],
                                                                 app_api: Api, queue: str) -> None:
    console = make_console(admin_keys="", console_read_only=True)
    task_id = create_id(app_api.enqueue, queue)
    assert console.get(f"/api/tasks/{task_id}").json["status"] == "queued"
    assert console.get(f"/api/queues/{queue}/tasks?state=queued").json["tasks"][0]["id"] == task_id
    error_of(console.post(f"/api/tasks/{task_id}:cancel"), 403, "read_only")
    assert console.get(f"/api/tasks/{task_id}").json["status"] == "queued"


# --------------------------------------------------------------------------- shapes of refusals


def test_unknown_routes_methods_names_and_ids(console: Any, queue: str) -> None:
    missing = f"{queue}~{uuid.uuid4().hex}"
    error_of(console.get("/api/nothing", headers=AS_ALICE), 404, "not_found")
    for path in (f"/api/tasks/{missing}", "/api/tasks/not-an-id", f"/api/redrives/{missing}",
                 "/api/queues/bad%20name", f"/api/queues/{'q' * 129}"):
        error_of(console.get(path, headers=AS_ALICE), 404, "not_found")
    for path in (f"/api/tasks/{missing}:cancel", f"/api/tasks/{missing}:retry", f"/api/redrives/{missing}:cancel"):
        error_of(console.post(path, headers=AS_ALICE), 404, "not_found")
    for method, path, allow in (("GET", f"/api/tasks/{missing}:cancel", "POST"),
                                ("GET", f"/api/queues/{queue}:pause", "POST"),
                                ("DELETE", f"/api/tasks/{missing}", "GET, HEAD"),
                                ("PUT", f"/api/queues/{queue}/redrives", "GET, HEAD, POST"),
                                ("POST", "/api/queues", "GET, HEAD"), ("POST", "/", "GET, HEAD")):
        response = console.open(path, method=method, headers=AS_ALICE)
        error_of(response, 405, "method_not_allowed")
        assert response.headers["Allow"] == allow, (path, response.headers)


def test_paging_parameters_are_validated(console: Any, app_api: Api, queue: str) -> None:
    base = f"/api/queues/{queue}/tasks"
    for query in ("", "?state=", "?state=bogus", "?state=queued&limit=0", "?state=queued&limit=201",
                  "?state=queued&limit=abc", "?state=queued&limit=-1", "?state=queued&limit=1.5",
                  f"?state=queued&cursor={'c' * 257}"):
        error = error_of(console.get(base + query, headers=AS_ALICE), 422, "validation_error")
        assert error["message"].split(":")[0] in ("state", "limit", "cursor"), error
    ids = [create_id(app_api.enqueue, queue) for _ in range(3)]
    first = console.get(base + "?state=queued&limit=2", headers=AS_ALICE).json
    assert [row["id"] for row in first["tasks"]] == ids[:2] and first["next_cursor"]
    rest = console.get(base, query_string={"state": "queued", "limit": "2", "cursor": first["next_cursor"]},
                       headers=AS_ALICE).json
    assert [row["id"] for row in rest["tasks"]] == ids[2:] and rest["next_cursor"] is None


# --------------------------------------------------------------------------- purge


def test_purge_needs_the_queue_name_as_confirmation(console: Any, app_api: Api, queue: str) -> None:
    ids = [create_id(app_api.enqueue, queue) for _ in range(2)]
    path = f"/api/queues/{queue}:purge"
    for body, field in (({"state": "queued"}, "confirm"), ({"state": "queued", "confirm": "other"}, "confirm"),
                        ({"state": "queued", "confirm": queue.upper()}, "confirm"),
                        ({"state": "running", "confirm": queue}, "state"), ({"confirm": queue}, "state"),
                        ({"state": "queued", "confirm": queue, "force": True}, "force"), ([queue], "body")):
        error = error_of(console.post(path, json=body, headers=AS_ALICE), 422, "validation_error")
        assert error["message"].startswith(f"{field}:"), (body, error)
    error_of(console.post(path, data=b"state=queued", headers={**AS_ALICE, "Content-Type": "text/plain"}),
             415, "unsupported_media_type")
    error_of(console.post(path, data=b"{", headers={**AS_ALICE, "Content-Type": "application/json"}),
             400, "bad_request")
    assert console.get(f"/api/queues/{queue}", headers=AS_ALICE).json["counts"]["queued"] == 2  # nothing purged yet
    purged = console.post(path, json={"state": "queued", "confirm": queue}, headers=AS_ALICE)
    assert (purged.status_code, purged.json) == (200, {"purged": 2}), purged.text
    assert {console.get(f"/api/tasks/{task_id}", headers=AS_ALICE).json["status"] for task_id in ids} == {"cancelled"}


# --------------------------------------------------------------------------- redaction


def test_redact_masks_the_paths_it_reaches_and_leaves_the_original() -> None:
    payload = {"card": {"number": "4111", "exp": "12/30"}, "password": "pw", "items": [{"secret": 1, "n": 2}, 3],
               "cards": "not an object"}
    masked = redact(payload, ("card.number", "password", "items.secret", "card.number.deeper", "missing.x", ".", ""))
    assert masked == {"card": {"number": MASK, "exp": "12/30"}, "password": MASK,
                      "items": [{"secret": MASK, "n": 2}, 3], "cards": "not an object"}
    assert payload["card"]["number"] == "4111" and payload["items"][0]["secret"] == 1  # not changed
    assert redact("text", ("a",)) == "text" and redact([{"a": 1}], ("a",)) == [{"a": MASK}]


def test_task_detail_redacts_the_payload(console: Any, app_api: Api, queue: str) -> None:
    payload = {"card": {"number": "4111111111111111", "cvc": "123"}, "password": "hunter2",
               "items": [{"secret": "s1", "sku": "a"}, {"sku": "b"}], "note": "password"}
    task_id = create_id(app_api.enqueue, queue, payload=payload)
    detail = console.get(f"/api/tasks/{task_id}", headers=AS_ALICE)
    assert detail.status_code == 200, detail.text
    assert detail.json["payload"] == {"card": {"number": MASK, "cvc": "123"}, "password": MASK,
                                      "items": [{"secret": MASK, "sku": "a"}, {"sku": "b"}], "note": "password"}
    for secret in ("4111111111111111", "hunter2", "s1"):
        assert secret not in detail.text


# --------------------------------------------------------------------------- static files


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("console-static")
    (root / "static").mkdir()
    files = {"index.html": "<!doctype html><title>taskbus</title>", "app.js": "export {};", "app.css": "body{}",
             "vendor/uplot/LICENSE.txt": "MIT", "vendor/uplot/LICENSE": "The MIT License", "logo.svg": "<svg/>",
             "data.bin": "\x00", ".env": "SECRET=1"}
    for name, text in files.items():
        (root / "static" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "static" / name).write_text(text)
    (root / "outside.txt").write_text("not served")
    (root / "static" / "link.txt").symlink_to(root / "outside.txt")
    return root / "static"


@pytest.fixture(scope="module")
def dashboard(make_console: Callable[..., Any], static_dir: Path) -> Any:
    client = make_console()
    client.built.module.service.api.files = StaticFiles(static_dir)
    return client


def test_the_dashboard_files_are_served_with_their_types_and_a_strict_policy(dashboard: Any) -> None:
    for path, media_type, text in (("/", "text/html", "<!doctype html>"),
                                   ("/static/index.html", "text/html", "<title>"),
                                   ("/static/app.js", "text/javascript", "export"),
                                   ("/static/app.css", "text/css", "body"),
                                   ("/static/vendor/uplot/LICENSE.txt", "text/plain", "MIT"),
                                   ("/static/vendor/uplot/LICENSE", "text/plain", "The MIT License"),
                                   ("/static/logo.svg", "image/svg+xml", "<svg"),
                                   ("/static/data.bin", "application/octet-stream", "\x00")):
        response = dashboard.get(path)  # no key: the page asks for it, the API needs it
        assert response.status_code == 200, (path, response.text)
        assert response.headers["Content-Type"].split(";")[0] == media_type, (path, response.headers)
        assert response.headers["Content-Security-Policy"] == CSP and CSP.startswith("default-src 'self';")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "Set-Cookie" not in response.headers
        assert text in response.text


def test_nothing_outside_the_static_folder_is_served(dashboard: Any, static_dir: Path) -> None:
    for path in ("/static/.env", "/static/link.txt", "/static/missing.js", "/static/vendor", "/static/vendor/",
                 "/static/..%2Foutside.txt", "/static/%2e%2e/outside.txt", "/static/vendor/..%2F..%2Foutside.txt",
                 "/static/a%5C..%5Coutside.txt", "/static/%00"):
        response = dashboard.get(path)
        assert response.status_code == 404, (path, response.status_code, response.text)
        assert "not served" not in response.text and "SECRET" not in response.text
    files = StaticFiles(static_dir)
    for path in ("../outside.txt", "vendor/../../outside.txt", "/etc/passwd", "vendor//uplot/LICENSE.txt", "."):
        with pytest.raises(Exception, match="no file"):
            files.response(path)


def test_without_a_dashboard_the_index_is_a_json_404(make_console: Callable[..., Any], tmp_path: Path) -> None:
    client = make_console()
    client.built.module.service.api.files = StaticFiles(tmp_path / "none")
    error_of(client.get("/"), 404, "not_found")


# --------------------------------------------------------------------------- operations through HTTP


def test_cancel_a_queued_task_then_again_on_both_functions(console: Any, app_api: Api, queue: str) -> None:
    for cancel in (lambda task_id: console.post(f"/api/tasks/{task_id}:cancel", headers=AS_ALICE),
                   lambda task_id: app_api.enqueue.post(f"/tasks/{task_id}:cancel")):
        task_id = create_id(app_api.enqueue, queue)
        listed = console.get(f"/api/queues/{queue}/tasks?state=queued", headers=AS_ALICE).json["tasks"]
        assert task_id in [row["id"] for row in listed]
        first = cancel(task_id)
        assert first.status_code == 200, first.text
        assert first.json["outcome"] == "cancelled" and first.json["task"]["status"] == "cancelled"
        assert first.json["task"]["id"] == task_id
        again = cancel(task_id)
        assert error_of(again, 409, "conflict")["status"] == "cancelled"
        assert app_api.status.get(f"/tasks/{task_id}").json["status"] == "cancelled"
    error_of(app_api.enqueue.post(f"/tasks/{queue}~{uuid.uuid4().hex}:cancel"), 404, "not_found")
    error_of(app_api.enqueue.post("/tasks/bogus:cancel"), 404, "not_found")


def test_a_failed_task_is_retried_back_to_queued(console: Any, app_api: Api, queue: str,
                                                 workers: Callable[..., Proc]) -> None:
    task_id = create_id(app_api.enqueue, queue, type="fail", max_attempts=1)
    worker = workers()
    wait_until(lambda: app_api.status.get(f"/tasks/{task_id}").json["status"] == "failed", timeout=20,
               message="the task to fail")
    worker.kill()
    dead = console.get(f"/api/queues/{queue}/tasks?state=dead", headers=AS_ALICE).json["tasks"]
    assert [row["id"] for row in dead] == [task_id]
    retried = console.post(f"/api/tasks/{task_id}:retry", headers=AS_ALICE)
    assert retried.status_code == 200, retried.text
    assert retried.json["task"]["status"] == "queued"
    error_of(console.post(f"/api/tasks/{task_id}:retry", headers=AS_ALICE), 409, "conflict")
    detail = console.get(f"/api/tasks/{task_id}", headers=AS_ALICE).json
    assert detail["status"] == "queued" and len(detail["history"]) >= 1
    assert ("alice", "retry") in [(entry["actor"], entry["action"]) for entry in detail["audit"]]


def test_redrive_requests_are_validated_counted_and_created(console: Any, queue: str) -> None:
    path = f"/api/queues/{queue}/redrives"
    for body, field in (({"rate": 0}, "rate"), ({"rate": -1}, "rate"), ({"rate": True}, "rate"),
                        ({"rate": 10_001}, "rate"), ({"since": "yesterday"}, "since"),
                        ({"until": "2026-12-01T10:00:00"}, "until"), ({"dry_run": "yes"}, "dry_run"),
                        ({"error_type": ""}, "error_type"), ({"type": 7}, "type"), ({"queue": queue}, "queue")):
        error = error_of(console.post(path, json=body, headers=AS_ALICE), 422, "validation_error")
        assert error["message"].startswith(f"{field}:"), (body, error)
    dry = console.post(path, json={"dry_run": True, "since": "2026-01-01T00:00:00Z"}, headers=AS_ALICE)
    assert (dry.status_code, dry.json) == (200, {"dry_run": True, "matched": 0}), dry.text
    created = console.post(path, json={"rate": 5, "error_type": "RuntimeError"}, headers=AS_ALICE)
    assert created.status_code == 201, created.text
    job = created.json
    assert created.headers["Location"] == f"/api/redrives/{job['id']}" and job["queue"] == queue
    assert job["created_by"] == "alice"
    assert console.get(created.headers["Location"], headers=AS_ALICE).json["id"] == job["id"]
    assert [one["id"] for one in console.get(path, headers=AS_ALICE).json["redrives"]] == [job["id"]]
    wait_until(lambda: console.get(created.headers["Location"], headers=AS_ALICE).json["state"] != "running",
               timeout=10, message="the empty re-drive to end")  # nothing to move: the runner ends it


# --------------------------------------------------------------------------- Redis down


def test_with_redis_down_every_api_route_is_a_503_with_retry_after(make_console: Callable[..., Any]) -> None:
    """Reads and actions alike, within the Redis client's bound; what needs no Redis keeps its status."""
    console = make_console(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    task = f"dead-q~{'a' * 32}"
    cases = [("GET", "/healthz", None), ("GET", "/api/queues", None), ("GET", "/api/queues/dead-q", None),
             ("GET", "/api/queues/dead-q/tasks?state=dead", None), ("GET", f"/api/tasks/{task}", None),
             ("POST", f"/api/tasks/{task}:cancel", None), ("POST", f"/api/tasks/{task}:retry", None),
             ("POST", "/api/queues/dead-q:pause", None),
             ("POST", "/api/queues/dead-q:purge", {"state": "dead", "confirm": "dead-q"}),
             ("POST", "/api/queues/dead-q/redrives", {"dry_run": True}), ("GET", "/api/workers", None)]
    for method, path, body in cases:
        began = time.monotonic()
        response = console.open(path, method=method, json=body, headers=AS_ALICE)
        error_of(response, 503, "unavailable")
        assert int(response.headers["Retry-After"]) >= 1 and time.monotonic() - began < 2.0, path
    error_of(console.get("/api/queues/dead-q/tasks?state=bogus", headers=AS_ALICE), 422, "validation_error")
    error_of(console.get("/api/queues", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
    assert console.get("/openapi.json").status_code == 200


def test_cancel_a_running_task_answers_202_and_it_ends_cancelled(console: Any, app_api: Api, queue: str,
                                                                 workers: Callable[..., Proc]) -> None:
    marks = f"tb:{{{queue}}}:test-marks"
    task_id = create_id(app_api.enqueue, queue, type="until_cancelled", payload={"key": marks, "seconds": 20})
    workers(handlers="tests.handlers")
    wait_until(lambda: app_api.status.get(f"/tasks/{task_id}").json["status"] == "running", timeout=20,
               message="the task to run")
    cancelling = console.post(f"/api/tasks/{task_id}:cancel", headers=AS_BOB)
    assert cancelling.status_code == 202, cancelling.text
    assert cancelling.json["outcome"] == "cancelling" and cancelling.json["task"]["status"] == "running"
    done = app_api.status.get(f"/tasks/{task_id}", query_string={"wait": "15"}).json
    assert done["status"] == "cancelled", done
    assert error_of(console.post(f"/api/tasks/{task_id}:cancel", headers=AS_BOB), 409, "conflict")["status"] == \
        "cancelled"
