"""Concurrent callers of one piece of work, in one process, share a single run of it.

The Redis lock (api/routes/products.py) keeps the workers of every host from computing
the same entry at once, but it fails open: with Redis down, each request would run the
aggregate itself. This bounds that to one run per worker process.
"""

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._running: dict[str, asyncio.Task[T]] = {}

    def running(self, key: str) -> bool:
        return key in self._running

    async def do(self, key: str, work: Callable[[], Awaitable[T]]) -> T:
        """The result of `work()`, run once for every caller that asks while it runs.

        Its exception reaches every caller. A caller cancelled meanwhile (its request's
        deadline) leaves the run going for the others: the run is shielded, and bounded
        by the bounds of what it calls."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._running[key] = task
            task.add_done_callback(partial(self._done, key))
        return await asyncio.shield(task)

    def _done(self, key: str, task: asyncio.Task[T]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            # Retrieved here: when every caller gave up, asyncio would log it as lost.
            task.exception()
