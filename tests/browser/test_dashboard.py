"""The dashboard in a real headless Chromium against a real console function, worker and Valkey:
what an operator sees matches Redis, and what they click changes it."""

from __future__ import annotations

import re
import time

import pytest
import redis
from playwright.sync_api import Locator, Page, expect

from taskbus.keys import Keys
from testkit.procs import wait_until
from tests.browser.conftest import Stack, screenshot, sign_in

pytestmark = pytest.mark.browser

HOSTILE = "<img src=x onerror=document.title='owned'>"  # no double quote: JSON shows it as is


def cells(page: Page, queue: str) -> dict[str, str]:
    """The overview table's row of `queue`, by field."""
    row = page.locator(f"#queues tr[data-queue='{queue}']")
    expect(row).to_be_visible()
    return {str(cell.get_attribute("data-field")): cell.inner_text().strip() for cell in row.locator("td").all()}


def test_sign_in_refuses_a_wrong_key_and_keeps_the_right_one_for_the_tab(page: Page, stack: Stack) -> None:
    page.fill("#login input[name=key]", "not-" + stack.key)
    page.click("#login button")
    expect(page.locator("#flash.error")).to_be_visible()
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    sign_in(page, stack.key)
    assert page.evaluate("Object.values(sessionStorage)") == [stack.key]
    assert page.context.cookies() == []  # no cookies, so no CSRF
    page.reload()  # the key survives a reload of the tab: no second sign-in
    expect(page.locator("#queues")).to_be_visible()


def test_overview_counts_match_redis_and_the_chart_draws(page: Page, stack: Stack) -> None:
    served, idle = stack.served[0], stack.idle[0]
    for n in range(3):
        stack.enqueue(idle, "echo", {"n": n})
    stack.enqueue(idle, "echo", delay_s=600)  # scheduled
    done = [stack.enqueue(served, "echo", {"n": n}) for n in range(6)]
    failed = [stack.enqueue(served, "permanent", {"key": f"{served}:runs"}, max_attempts=1) for _ in range(2)]
    for task_id in done + failed:
        stack.wait_status(task_id, "succeeded", "failed")
    sign_in(page, stack.key)
    for queue in (idle, served):
        counts = stack.admin.overview(queue)["counts"]
        shown = cells(page, queue)
        assert {name: shown[name] for name in counts} == {name: str(n) for name, n in counts.items()}
    expected = {"queued": 3, "scheduled": 1, "throttled": 0, "running": 0, "dead": 0}
    assert stack.admin.overview(idle)["counts"] == expected
    assert cells(page, served)["succeeded"] == "6" and cells(page, served)["failed"] == "2"
    expect(page.locator("#chart canvas")).to_have_count(1)
    # live: a task enqueued now shows up without a reload (the table refreshes every 2 s)
    stack.enqueue(idle, "echo")
    expect(page.locator(f"#queues tr[data-queue='{idle}'] td[data-field=queued]")).to_have_text("4")
    page.click(f"#queues tr[data-queue='{idle}'] button[data-action=pause]")
    expect(page.locator(f"#queues tr[data-queue='{idle}'] td[data-field=paused]")).to_have_text("paused by ops")
    assert stack.admin.overview(idle)["paused"] is True
    page.click(f"#queues tr[data-queue='{idle}'] button[data-action=resume]")
    expect(page.locator(f"#queues tr[data-queue='{idle}'] td[data-field=paused]")).to_have_text("no")
    assert stack.admin.overview(idle)["paused"] is False
    screenshot(page, "overview")


def test_a_failed_task_shows_its_traceback_and_its_payload_as_text(page: Page, stack: Stack) -> None:
    queue = stack.served[1]
    task_id = stack.enqueue(queue, "permanent", {"key": f"{queue}:runs", "note": HOSTILE}, max_attempts=1)
    task = stack.wait_status(task_id, "failed")
    sign_in(page, stack.key)
    page.goto(f"{stack.url}/#/queue/{queue}/dead")
    page.click(f"#tasks a[href='#/task/{task_id}']")
    expect(page.locator("#task-status")).to_have_text("failed")
    error = page.locator("#task-error")
    expect(error).to_contain_text("PermanentError: the input can never work")
    expect(error.locator("pre.traceback")).to_contain_text("Traceback (most recent call last)")
    expect(error.locator("pre.traceback")).to_contain_text("tests/handlers.py")
    assert task["error"]["traceback"].strip() == error.locator("pre.traceback").inner_text().strip()
    expect(page.locator("#history td[data-field=outcome]")).to_have_text(["failed"])
    expect(page.locator("pre.json").first).to_contain_text(HOSTILE)  # shown as text, never as markup
    assert page.locator("main img").count() == 0 and page.title() == "taskbus console"
    expect(page.locator("#retry")).to_be_enabled()
    expect(page.locator("#cancel")).to_be_disabled()
    page.click("#retry")  # a new attempt series under the same id: it runs (and fails) again
    expect(page.locator("#flash")).to_contain_text("Queued again")
    wait_until(lambda: len((stack.admin.task(task_id) or {}).get("history", [])) == 2, timeout=15,
               message="the retried attempt", proc=stack.worker)
    page.reload()
    expect(page.locator("#history td[data-field=outcome]")).to_have_text(["failed", "failed"])
    expect(page.locator("#audit td[data-field=action]")).to_contain_text([re.compile("retry")])
    screenshot(page, "task")


def test_a_queue_page_has_tabs_by_state_and_pages_by_cursor(page: Page, stack: Stack) -> None:
    queue = stack.idle[2]
    ids = [stack.enqueue(queue, "echo", {"n": n}) for n in range(53)]
    stack.enqueue(queue, "echo", delay_s=600)
    sign_in(page, stack.key)
    page.click(f"#queues a[href='#/queue/{queue}']")
    expect(page.locator(".tabs a.active")).to_have_text("queued (53)")
    shown = page.locator("#tasks td[data-field=id] a")
    expect(shown).to_have_count(50)
    assert [link.get_attribute("data-id") for link in shown.all()] == ids[:50]  # stream order, a page of 50
    assert shown.first.inner_text() == ids[0][ids[0].index("~"):]  # the queue's name is the page's title
    page.click(".paging >> text=Next")
    expect(shown).to_have_count(3)
    assert [link.get_attribute("data-id") for link in shown.all()] == ids[50:]
    expect(page.locator(".paging >> text=Next")).to_have_count(0)  # the last page
    page.click(".tabs >> text=scheduled (1)")
    expect(page.locator("#tasks td[data-field=due_at]")).to_have_count(1)


def test_cancel_a_queued_task_by_clicking(page: Page, stack: Stack, r: redis.Redis) -> None:
    task_id = stack.enqueue(stack.idle[1], "echo", {"wait": "forever"})
    sign_in(page, stack.key)
    page.fill("#search input[name=id]", task_id)  # search by id opens the task page
    page.click("#search button")
    expect(page.locator("#task-status")).to_have_text("queued")
    page.click("#cancel")
    expect(page.locator("#task-status")).to_have_text("cancelled")
    expect(page.locator("#flash")).to_have_text("Cancelled.")
    expect(page.locator("#audit td[data-field=action]")).to_contain_text([re.compile("cancel")])
    assert r.hget(Keys(stack.settings.key_prefix).task(task_id), "status") == "cancelled"  # in Redis itself
    task = stack.admin.task(task_id)
    assert task is not None and task["status"] == "cancelled"
    assert [entry["actor"] for entry in task["audit"]] == ["ops"]  # the key's label is the actor
    expect(page.locator("#cancel")).to_be_disabled()  # terminal now
    expect(page.locator("#retry")).to_be_enabled()  # a cancelled task may be retried


def test_cancel_a_running_task_and_watch_it_end_cancelled(page: Page, stack: Stack) -> None:
    queue = stack.served[1]
    task_id = stack.enqueue(queue, "until_cancelled", {"key": f"{queue}:runs", "seconds": 30})
    stack.wait_status(task_id, "running")
    sign_in(page, stack.key)
    page.goto(f"{stack.url}/#/task/{task_id}")
    expect(page.locator("#task-status")).to_have_text("running")
    page.click("#cancel")
    expect(page.locator("#flash")).to_contain_text("Cancelling")
    expect(page.locator("#task-status")).to_have_text("cancelled")  # the page follows it to the end
    task = stack.admin.task(task_id)
    assert task is not None and task["status"] == "cancelled" and task["cancel_requested_at"]
    assert [attempt["outcome"] for attempt in task["history"]] == ["cancelled"]


def test_redrive_dead_letters_with_the_form_and_follow_its_progress(page: Page, stack: Stack) -> None:
    queue, total, rate = stack.served[2], 20, 10
    dead = [stack.enqueue(queue, "permanent", {"key": f"{queue}:runs"}, max_attempts=1) for _ in range(total)]
    stack.enqueue(queue, "flaky3", max_attempts=1)  # a dead letter the filter leaves out
    wait_until(lambda: stack.admin.overview(queue)["counts"]["dead"] == total + 1, timeout=20,
               message="the dead letters", proc=stack.worker)
    sign_in(page, stack.key)
    page.goto(f"{stack.url}/#/dead/{queue}")
    page.fill("#redrive-form input[name=error_type]", "PermanentError")
    page.fill("#redrive-form input[name=type]", "permanent")
    page.click("#dry-run")
    expect(page.locator("#dry-run-count")).to_have_text(f"{total} dead letters match.")
    page.fill("#redrive-form input[name=rate]", str(rate))
    page.click("#redrive")
    card = page.locator("[data-redrive]").first
    expect(card).to_be_visible()
    seen = [_percent(card)]
    began = time.monotonic()
    while seen[-1] < 100:  # the bar follows GET /api/redrives/<id>: it only ever moves forward
        assert time.monotonic() - began < 20, f"the re-drive stalled at {seen[-1]}%"
        page.wait_for_timeout(100)
        seen.append(_percent(card))
    assert seen == sorted(seen) and len(set(seen)) > 2, seen  # at 10/s (2 s) it is seen moving, not jumping to 100
    expect(card.locator(".progress-text")).to_have_text(f"{total} of {total} moved (100%)")
    expect(card).to_have_attribute("data-state", "done")
    job = stack.redrives.get(str(card.get_attribute("data-redrive")))
    assert job is not None and job["state"] == "done" and job["moved"] == total
    assert job["created_by"] == "ops" and job["filters"]["error_type"] == "PermanentError"
    for task_id in dead[:3]:  # re-driven: queued again and run again (they fail again)
        task = stack.admin.task(task_id)
        assert task is not None and any(entry["action"].startswith("redrive") for entry in task["audit"])
    screenshot(page, "redrive")


def _percent(card: Locator) -> int:
    return int(card.locator("progress").get_attribute("data-percent") or 0)


def test_workers_page_lists_the_live_worker(page: Page, stack: Stack) -> None:
    sign_in(page, stack.key)
    page.click("#nav a[href='#/workers']")
    live = stack.admin.workers(stack.served[0])
    assert len(live) == 1
    row = page.locator("#workers tr", has=page.locator(f"td[data-field=consumer]:text-is('{live[0]['consumer']}')"))
    expect(row.locator("td[data-field=queues]")).to_have_text(", ".join(live[0]["queues"]))


def test_cancel_a_redrive_from_its_card(page: Page, stack: Stack) -> None:
    queue, total = stack.served[3], 8
    for _ in range(total):
        stack.enqueue(queue, "fail", max_attempts=1)
    wait_until(lambda: stack.admin.overview(queue)["counts"]["dead"] >= total, timeout=20,
               message="the dead letters", proc=stack.worker)
    sign_in(page, stack.key)
    page.goto(f"{stack.url}/#/dead/{queue}")
    page.fill("#redrive-form input[name=type]", "fail")
    page.fill("#redrive-form input[name=rate]", "0.5")  # slow enough to be cancelled half-way
    page.click("#redrive")
    card = page.locator("[data-redrive]").first
    card.locator("button[data-action=cancel-redrive]").click()
    expect(card).to_have_attribute("data-state", "cancelled")
    expect(card.locator("button[data-action=cancel-redrive]")).to_be_hidden()
    job = stack.redrives.get(str(card.get_attribute("data-redrive")))
    assert job is not None and job["state"] == "cancelled" and job["cancelled_by"] == "ops"
    assert job["moved"] < total


def test_an_open_read_only_console_needs_no_key_and_offers_no_action(page: Page, stack: Stack,
                                                                     open_console: str) -> None:
    queue = stack.idle[1]
    page.goto(open_console + "/")
    expect(page.locator("#open-note")).to_be_visible()  # no sign-in form: nothing to type
    expect(page.locator("#login")).to_be_hidden()
    expect(page.locator("#logout")).to_be_hidden()
    pause = page.locator(f"#queues tr[data-queue='{queue}'] button[data-action=pause]")
    expect(pause).to_be_attached()
    expect(pause).to_be_hidden()  # the API says it is read-only: its actions are not offered
    refused = page.evaluate("""async (q) => (await fetch(`/api/queues/${q}:pause`, {method: "POST"})).status""", queue)
    assert refused == 403  # and the server refuses them anyway
    assert stack.admin.overview(queue)["paused"] is False
