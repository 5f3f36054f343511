"""On-demand profiling of a single request with pyinstrument.

Installed only when SHOP_PROFILING_ENABLED is true and SHOP_ADMIN_TOKEN is
set, so production pays nothing for it. Even then a request is profiled only
when it carries the token, in the X-Profile-Token header or as
?profile=1&profile_token=...; the response is then the profile (HTML, or text
with X-Profile-Format: text) instead of the endpoint's own answer.
"""

import hmac
from typing import Any
from urllib.parse import parse_qs

from pyinstrument import Profiler


class ProfilingMiddleware:
    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def _wants_profile(self, scope: dict) -> tuple[bool, bool]:
        """(authorized, as_text) for this request."""
        headers = dict(scope["headers"])
        token = headers.get(b"x-profile-token")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if token is None and query.get("profile") == ["1"]:
            token = query.get("profile_token", [""])[0].encode()
        authorized = token is not None and hmac.compare_digest(token, self.token)
        return authorized, headers.get(b"x-profile-format") == b"text"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorized, as_text = self._wants_profile(scope)
        if not authorized:
            await self.app(scope, receive, send)
            return

        async def discard(_: dict) -> None:
            return None

        profiler = Profiler(async_mode="enabled")
        profiler.start()
        try:
            await self.app(scope, receive, discard)
        finally:
            profiler.stop()

        if as_text:
            body = profiler.output_text(unicode=True).encode()
            content_type = b"text/plain; charset=utf-8"
        else:
            body = profiler.output_html().encode()
            content_type = b"text/html; charset=utf-8"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
