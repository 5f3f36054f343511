"""An open-loop load generator: requests start on a fixed schedule, whatever the server does.

Each request's latency is measured from the time it was *meant* to start, so a stalled
server shows up as latency of every request scheduled meanwhile (no coordinated omission:
a closed-loop tool that waits for a response before sending the next one would just send
fewer requests and report the stall once). Standard library only: asyncio, ssl.
"""

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def get(self, host: str, path: str) -> int:
        self.writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench-openloop\r\n\r\n".encode()
        )
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("connection closed")
        status = int(status_line.split()[1])
        length, chunked, close = 0, False, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "connection" and value == "close":
                close = True
        if chunked:
            while (size := int((await self.reader.readline()).split(b";")[0], 16)) > 0:
                await self.reader.readexactly(size + 2)
            await self.reader.readline()
        else:
            await self.reader.readexactly(length)
        if close:
            raise _Closed(status)
        return status

    def close(self) -> None:
        self.writer.close()


class _Closed(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


@dataclass
class Schedule:
    rate: float  # requests per second
    duration_s: float
    max_connections: int = 256
    # How long after the last scheduled start unfinished requests are given up (timeouts).
    grace_s: float = 10.0


async def run(base_url: str, next_path: Callable[[], str], schedule: Schedule) -> dict:
    """Send schedule.rate requests/s for schedule.duration_s; latencies in ms from the
    intended start of each request."""
    rate, duration_s, grace_s = schedule.rate, schedule.duration_s, schedule.grace_s
    max_connections = schedule.max_connections
    url = urlsplit(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    context = None
    if url.scheme == "https":
        # The local environment's certificate is self-signed.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    idle: list[_Connection] = []
    opened = 0
    slots = asyncio.Semaphore(max_connections)
    latencies: list[float] = []
    result = {"errors": 0, "non2xx": 0}

    async def one(intended: float) -> None:
        nonlocal opened
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        async with slots:
            conn = idle.pop() if idle else None
            try:
                if conn is None:
                    reader, writer = await asyncio.open_connection(url.hostname, port, ssl=context)
                    conn, opened = _Connection(reader, writer), opened + 1
                status = await conn.get(url.hostname or "", next_path())
                idle.append(conn)
            except _Closed as closed:
                status = closed.status
                conn.close()
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, ConnectionError):
                result["errors"] += 1
                if conn is not None:
                    conn.close()
                return
        latencies.append((time.perf_counter() - intended) * 1000)
        if not 200 <= status < 300:
            result["non2xx"] += 1

    start = time.perf_counter() + 0.05
    total = int(rate * duration_s)
    tasks = [asyncio.create_task(one(start + i / rate)) for i in range(total)]
    # A server that cannot keep up would keep the run going for ever: what has not
    # finished `grace_s` after the last scheduled start is a timeout (an error).
    _, late = await asyncio.wait(tasks, timeout=duration_s + grace_s + 0.05)
    for task in late:
        task.cancel()
    result["errors"] += len(late)
    result["timeouts"] = len(late)
    for conn in idle:
        conn.close()
    result.update(
        requests=total,
        latencies_ms=latencies,
        connections=opened,
        rate=rate,
        duration_s=duration_s,
    )
    return result
