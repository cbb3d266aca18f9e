"""The blog design's enqueue endpoint: FastAPI `POST /enqueue/` that PUBLISHes the task as
JSON on a channel and answers with a task id. Served by
`uvicorn bench.peers.blog_app:app --workers 2 --loop uvloop --http httptools --no-access-log`."""

import json
import uuid
from typing import Any

import redis.asyncio as aioredis
from fastapi import Body, FastAPI

from bench.peers import redis_url

CHANNEL = "tasks"

app = FastAPI()
_redis = aioredis.Redis.from_url(redis_url())


@app.post("/enqueue/")
async def enqueue(task: dict[str, Any] = Body(...)) -> dict[str, str]:
    task_id = str(uuid.uuid4())
    await _redis.publish(CHANNEL, json.dumps({"task_id": task_id, "task": task}))
    return {"message": "Task published", "task_id": task_id}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    await _redis.ping()
    return {"status": "ok"}
