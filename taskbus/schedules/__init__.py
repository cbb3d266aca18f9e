"""Schedules: tasks enqueued at cron or fixed-interval slots, exactly once per slot, by any
worker (no leader). `model` holds the declaration, `slots` the arithmetic, `store` the Redis
side and `runner` the loop each worker runs."""

from taskbus.schedules.model import Schedule
from taskbus.schedules.runner import SchedulerRunner

__all__ = ["Schedule", "SchedulerRunner"]
