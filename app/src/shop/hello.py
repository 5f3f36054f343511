"""A bare ASGI hello world: `shop.hello:app`, the ceiling of the app tier in the benchmark.

Same nginx, Gunicorn and Uvicorn worker as the shop, but no framework, no database and
no middleware: what is left is the cost of the server stack itself. Imports nothing.
"""

_HELLO = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"5")],
}
_NOT_ALLOWED = {
    "type": "http.response.start",
    "status": 405,
    "headers": [(b"allow", b"GET, HEAD"), (b"content-length", b"0")],
}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["method"] in ("GET", "HEAD"):
        await send(_HELLO)
        body = b"hello" if scope["method"] == "GET" else b""
        await send({"type": "http.response.body", "body": body})
    else:
        await send(_NOT_ALLOWED)
        await send({"type": "http.response.body", "body": b""})
