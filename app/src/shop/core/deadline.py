"""One deadline for a whole request: past it the client gets a 503, whatever it waited for.

Each dependency call has its own bound (core/db.py, core/cache.py), and those answer
first in the usual case. This is the backstop for the sum of them: a request that
makes several calls, each inside its bound, or a wait nothing else bounds, still ends
at the deadline. The work is cancelled, not left running: a database connection
cancelled mid-statement is discarded by SQLAlchemy, not returned to the pool.
"""

import asyncio
import json
import logging
from typing import Any

from shop import metrics

log = logging.getLogger(__name__)


class RequestDeadlineMiddleware:
    """A pure ASGI middleware: answers 503 with Retry-After when the deadline passes
    before the response has started. One that has started is cut off (the client sees
    a truncated response rather than a hang)."""

    def __init__(self, app: Any, timeout_seconds: float, retry_after_seconds: int) -> None:
        self.app = app
        self.timeout_seconds = timeout_seconds
        self.retry_after = str(retry_after_seconds).encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = False

        async def send_tracking(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        deadline = asyncio.timeout(self.timeout_seconds)
        try:
            async with deadline:
                await self.app(scope, receive, send_tracking)
        except TimeoutError:
            if not deadline.expired():
                raise
            method, path = scope.get("method"), scope.get("path")
            if started:
                log.warning(
                    "%s %s cut off: not done within %g s", method, path, self.timeout_seconds
                )
                return
            log.warning("%s %s not answered within %g s: 503", method, path, self.timeout_seconds)
            metrics.UNAVAILABLE.labels("deadline").inc()
            body = json.dumps({"detail": "the service did not answer in time, retry"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", self.retry_after),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
