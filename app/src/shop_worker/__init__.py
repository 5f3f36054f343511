"""The Gunicorn worker class: uvicorn-worker's, with a shutdown that drops no request.

When a worker stops (a graceful reload, `max_requests`, a scale-down), uvicorn closes at
once every connection whose request it has not read yet. A connection it accepted just
before the signal, with the request still in its socket buffer, is then reset: its client
gets no answer. This worker stops accepting first and waits `DRAIN_SECONDS`, so such
requests are read (and then served, on a connection that closes after the response)
before uvicorn's own graceful shutdown runs. Other workers keep accepting meanwhile.

A package of its own, next to `shop` and never importing it: Gunicorn's master imports
the worker class, and a `shop` module imported there would be inherited by every worker
it forks, so a graceful reload would keep serving the old release's code.
"""

from __future__ import annotations

import asyncio
import socket
import sys

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker as _UvicornWorker

DRAIN_SECONDS = 0.25


class DrainingServer(Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        await asyncio.sleep(DRAIN_SECONDS)
        await super().shutdown(sockets=sockets)


class UvicornWorker(_UvicornWorker):
    """uvicorn_worker.UvicornWorker (uvloop, httptools) serving with DrainingServer."""

    async def _serve(self) -> None:
        # As uvicorn-worker 0.4's _serve, with the draining server.
        self.config.app = self.wsgi
        server = DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
