"""Operations on the task state for operators: one implementation behind the console function,
the `taskbus` command and (cancel) the enqueue function.

    Admin(settings)                      the entry point; thread-safe; `close()` when done
      .queues() -> list[str]             known queues: QUEUES, every queue a worker announced or
                                         a task was enqueued to (the `<prefix>:queues` index)
      .overview(queue) -> dict           O(1) Redis commands per queue, never a scan of tasks:
          {queue, paused, paused_by, paused_at,
           counts: {queued, scheduled, running, dead},
           oldest_age_s: {queued, running}            (float seconds or None when none)
           last_hour: {succeeded, failed, cancelled},
           per_minute: [{at, succeeded, failed, cancelled}] * 15   oldest first, `at` ISO minute start
           per_10s:    [{at, succeeded, failed, cancelled}] * 90   oldest first (the live chart)
           dead_letters: {cap, ttl_s, evicted}, workers: int (live)}
      .overviews() -> list[dict]         the above for every known queue
      .tasks(queue, state, cursor=None, limit=50) -> {"tasks": [row], "next_cursor": str | None}
          state in STATES = queued (stream order), scheduled (by due time), running (pending
          entries, with worker and idle time), dead (newest first), finished (newest first:
          the bounded per-queue index of recently finished tasks); limit 1..200 (ValidationError
          otherwise), a page costs O(limit). row = the task's public view (`task.view`, without
          payload/result) plus, by state: scheduled {due_at}; running {worker, idle_s};
          dead {dead_at, error}; a row whose task record expired has only {id, status?, ...} it knows.
      .task(task_id) -> dict | None      the public view plus payload, cancel_requested_at,
          history: [{attempt, worker, started_at, finished_at, outcome, error}] oldest first
                   (outcome in succeeded, failed, retried, cancelled, lost, running),
          audit: [{at, actor, action, detail}] oldest first, dead_letter: {entry, at} | None
      .cancel(task_id, actor) -> (str, dict)  ("cancelled", view): it was queued or scheduled and
          never starts; ("cancelling", view): it runs, the handler sees ctx.cancelled and the task
          ends cancelled when it returns or CANCEL_GRACE_S passes; raises NotFound, or
          Conflict(status) when it is already terminal.
      .retry(task_id, actor) -> dict     a failed or cancelled task back to queued (a new attempt
          series under the same id; history kept); NotFound / Conflict otherwise
      .pause(queue, actor) / .resume(queue, actor) -> dict (the overview)
      .purge(queue, state, actor) -> int  state "queued" (each becomes cancelled, never runs) or
          "dead" (the dead letters dropped); the count removed
      .workers(queue=None) -> list[dict] live workers: {consumer, host, pid, queues, types,
          concurrency, in_flight, seen_at, started_at, version}
      redrives: see `taskbus.admin.redrive` (create, get, list, cancel, run)

Every key is under its queue's hash tag, every script gets its keys in KEYS; errors are
taskbus's own (`Unavailable` when Redis does not answer, `NotFound`, `Conflict`, `ValidationError`).
"""

from __future__ import annotations

from taskbus.admin.ops import MAX_PAGE, PURGEABLE, STATES, Admin

__all__ = ["Admin", "MAX_PAGE", "PURGEABLE", "STATES"]
