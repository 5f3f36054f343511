"""The worker's shutdown serves a request that arrives on a connection accepted before it.

Plain uvicorn closes such a connection at once when a worker stops (a reload, a
max_requests recycle), and its client gets no answer; shop_worker's server reads it first.
"""

import asyncio

import pytest
import uvicorn
from uvicorn.server import Server

from shop_worker import DrainingServer
from tests.servers import free_port

REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"


async def hello(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def answer_after_stop_begins(server_class: type[Server]) -> bytes:
    port = free_port()
    config = uvicorn.Config(hello, host="127.0.0.1", port=port, lifespan="off", log_level="error")
    server = server_class(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0.05)  # accepted, no request yet: what a stop can meet
    # What a worker does on SIGTERM; the request follows 20 ms later.
    stopping = asyncio.create_task(server.shutdown())
    await asyncio.sleep(0.02)
    writer.write(REQUEST)
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(), timeout=5)
    except ConnectionError:
        answer = b""
    writer.close()
    await stopping
    server.should_exit = True
    await serving
    return answer


@pytest.mark.parametrize(
    ("server_class", "served"), [(DrainingServer, True), (Server, False)], ids=["shop", "plain"]
)
async def test_worker_serves_a_request_accepted_before_the_stop(server_class, served):
    answer = await answer_after_stop_begins(server_class)
    assert answer.startswith(b"HTTP/1.1 200") is served, answer
