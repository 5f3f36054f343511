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

    async def get(self, host: str, path: str, headers: dict[str, str] | None = None) -> int:
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "User-Agent: bench-openloop"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
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
    grace_s: float = 5.0


# What next_path() gives: a path, or a path and headers to send with it (a token).
Request = str | tuple[str, dict[str, str]]


class _Generator:
    def __init__(self, base_url: str, next_path: Callable[[], Request], schedule: Schedule) -> None:
        url = urlsplit(base_url)
        self.host = url.hostname or ""
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.context = None
        if url.scheme == "https":
            # The local environment's certificate is self-signed.
            self.context = ssl.create_default_context()
            self.context.check_hostname = False
            self.context.verify_mode = ssl.CERT_NONE
        self.next_path, self.schedule = next_path, schedule
        self.idle: list[_Connection] = []
        self.slots = asyncio.Semaphore(schedule.max_connections)
        self.opened = 0
        self.latencies: list[float] = []
        self.errors = self.non2xx = 0

    async def connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.context)
        self.opened += 1
        return _Connection(reader, writer)

    async def send(self, path: str, headers: dict[str, str] | None = None) -> int:
        """One GET; a kept-alive connection the server has closed meanwhile is replaced
        by a new one once (GETs are safe to repeat)."""
        conn = self.idle.pop() if self.idle else None
        reused = conn is not None
        for attempt in (1, 2):
            if conn is None:
                conn = await self.connect()
            try:
                status = await conn.get(self.host, path, headers)
            except _Closed as closed:
                conn.close()
                return closed.status
            except (OSError, asyncio.IncompleteReadError, ConnectionError):
                conn.close()
                conn = None
                if not reused or attempt == 2:
                    raise
                continue
            self.idle.append(conn)
            return status
        raise AssertionError("unreachable")

    async def one(self, intended: float) -> None:
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        async with self.slots:
            request = self.next_path()
            path, headers = (request, None) if isinstance(request, str) else request
            try:
                status = await self.send(path, headers)
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, ConnectionError):
                self.errors += 1
                return
        self.latencies.append((time.perf_counter() - intended) * 1000)
        if not 200 <= status < 300:
            self.non2xx += 1

    async def run(self) -> dict:
        rate, duration_s = self.schedule.rate, self.schedule.duration_s
        start = time.perf_counter() + 0.05
        total = int(rate * duration_s)
        tasks = [asyncio.create_task(self.one(start + i / rate)) for i in range(total)]
        # A server that cannot keep up would keep the run going for ever: what has not
        # finished grace_s after the last scheduled start is a timeout (an error).
        _, late = await asyncio.wait(tasks, timeout=duration_s + self.schedule.grace_s + 0.05)
        for task in late:
            task.cancel()
        for conn in self.idle:
            conn.close()
        return {
            "requests": total,
            "errors": self.errors + len(late),
            "timeouts": len(late),
            "non2xx": self.non2xx,
            "latencies_ms": self.latencies,
            "connections": self.opened,
            "rate": rate,
            "duration_s": duration_s,
        }


async def run(base_url: str, next_path: Callable[[], Request], schedule: Schedule) -> dict:
    """Send schedule.rate requests/s for schedule.duration_s; latencies in ms from the
    intended start of each request. next_path() gives each request's path, or its path and
    headers."""
    return await _Generator(base_url, next_path, schedule).run()
