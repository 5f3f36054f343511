#!/usr/bin/env python3
"""A TCP forwarder for the local HA layout (`make up ha=1`), run in its own container.

Docker publishes a port to one container's own address, never to an address that moves
between containers, such as the web tier's floating address (roles/keepalived). This
forwarder takes the published ports and connects each new client to the floating address,
so a browser on localhost:8443 keeps working when a web host dies. It is a test-bed detail,
not part of the HA claim: in production the floating address is the one clients reach.

Usage: forward.py LISTEN_PORT=HOST:PORT [...]
"""

import asyncio
import sys

CONNECT_TIMEOUT = 3.0  # seconds; the client's connection is closed if the target does not answer
CHUNK = 65536


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def handler(host: str, port: int):
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            target_r, target_w = await asyncio.wait_for(
                asyncio.open_connection(host, port), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            print(f"forward: {host}:{port}: {exc!r}", file=sys.stderr, flush=True)
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, target_w), pipe(target_r, client_w))

    return handle


async def main(rules: list[str]) -> None:
    servers = []
    for rule in rules:
        listen, _, target = rule.partition("=")
        host, _, port = target.rpartition(":")
        server = await asyncio.start_server(handler(host, int(port)), "0.0.0.0", int(listen))  # noqa: S104
        print(f"forward: :{listen} -> {host}:{port}", flush=True)
        servers.append(server)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    if len(sys.argv) < 2 or not all("=" in a and ":" in a for a in sys.argv[1:]):
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1:]))
