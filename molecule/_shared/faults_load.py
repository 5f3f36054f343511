"""Paced HTTPS load for the fault suite; standard library only, run inside the web host.

test_faults.py sends this file's source to `python3 -c` on the web host (docker exec -i),
so the load starts next to nginx and measures what nginx answers, not the Docker network.
Open loop: request n starts at start + n / rate whatever the earlier ones are doing (a
hung request does not slow the schedule down, as real clients would not), each on a new
connection with its own timeout. It runs until a line arrives on stdin, stdin closes (the
test ended or died) or --max-seconds pass; then it waits for the requests in flight (each
bounded by --timeout) and exits.

Every finished request is one JSON line on stdout, as soon as it finishes:
    {"n": 17, "kind": "user", "method": "GET", "start": 1764547200.12, "seconds": 0.011,
     "status": 200, "error": "", "order": null}
start is the epoch time (the host's clock, which the containers share with the test).
status is 0 when no answer came (error says why: "timeout" or "connection"); order is the
id of an order answered 201. The last line is {"done": true, "sent": N}.

Orders and a user's orders need a bearer token. --writers and --readers name seeded demo
users whose tokens are in --token-dir (user<N>.token, as stack_testinfra.log_in leaves
them on the web host; read once at the start, so no token is on a command line): orders
are placed as a writer, and a reader reads their own orders. The two are kept apart so
that the orders the load places do not make the reads slower fault after fault. Without
them, those requests go without a token (and are answered 401).

By hand, on the web host (stdin held open for 10 s; tokens from an earlier test run):
    sleep 10 | python3 faults_load.py --rate 12 --max-seconds 10 --writers 11 --readers 15
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import ssl
import sys
import threading
import time
from pathlib import Path

CATEGORIES = ("books", "music", "games", "garden", "kitchen", "toys")
# One cycle of the mix: mostly reads (the cached popular list, a user, a user's orders, a
# category page) and one order in twelve requests.
MIX = (
    "popular",
    "user",
    "category",
    "popular",
    "orders",
    "user",
    "popular",
    "category",
    "order",
    "user",
    "popular",
    "orders",
)


def request_for(
    kind: str, rng: random.Random, readers: list[int], writers: list[int]
) -> tuple[str, str, bytes | None, int | None]:
    """Method, path, body, and the demo user whose token goes with it (or None)."""
    if kind == "popular":
        return "GET", "/api/products/popular?limit=10", None, None
    if kind == "user":
        return "GET", f"/api/users/{rng.randint(1, 1000)}", None, None
    if kind == "orders":
        user = rng.choice(readers) if readers else rng.randint(1, 1000)
        return "GET", f"/api/users/{user}/orders", None, user if readers else None
    if kind == "category":
        return "GET", f"/api/products?category={rng.choice(CATEGORIES)}&limit=20", None, None
    body = json.dumps({"items": [{"product_id": rng.randint(1, 100), "quantity": 1}]}).encode()
    return "POST", "/api/orders", body, rng.choice(writers) if writers else None


def read_tokens(directory: str, users: list[int]) -> dict[int, str]:
    return {user: (Path(directory) / f"user{user}.token").read_text().strip() for user in users}


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.context = ssl.create_default_context()
        # nginx's certificate is the stack's own (self-signed in the test bed). Its HTTPS
        # site is the default server, so no SNI is needed; Host carries the site's name.
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE
        self.out = threading.Lock()
        self.stop = threading.Event()
        self.tokens = read_tokens(args.token_dir, args.readers + args.writers)

    def emit(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"))
        with self.out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def one(self, n: int, start: float) -> None:
        rng = random.Random(n)  # noqa: S311 - picks ids for a load mix, nothing secret
        kind = MIX[n % len(MIX)]
        method, path, body, user = request_for(kind, rng, self.args.readers, self.args.writers)
        status, error, order = 0, "", None
        began = time.monotonic()
        try:
            conn = http.client.HTTPSConnection(
                self.args.address,
                self.args.port,
                context=self.context,
                timeout=self.args.timeout,
            )
            headers = {"Host": self.args.server_name, "Connection": "close"}
            if user is not None:
                headers["Authorization"] = f"Bearer {self.tokens[user]}"
            if body is not None:
                headers["Content-Type"] = "application/json"
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
            finally:
                conn.close()
            if status == 201 and kind == "order":
                order = json.loads(data)["id"]
        except TimeoutError:
            error = "timeout"
        except (OSError, http.client.HTTPException) as exc:
            error = f"connection: {type(exc).__name__}"
        except ValueError as exc:
            error = f"bad body: {exc}"
        self.emit(
            {
                "n": n,
                "kind": kind,
                "method": method,
                "start": start,
                "seconds": round(time.monotonic() - began, 4),
                "status": status,
                "error": error,
                "order": order,
            }
        )

    def watch_stdin(self) -> None:
        sys.stdin.readline()
        self.stop.set()

    def run(self) -> None:
        threading.Thread(target=self.watch_stdin, daemon=True).start()
        begin_mono, begin_wall = time.monotonic(), time.time()
        end = begin_mono + self.args.max_seconds
        workers: list[threading.Thread] = []
        n = 0
        while True:
            due = begin_mono + n / self.args.rate
            now = time.monotonic()
            if due > now and self.stop.wait(due - now):
                break
            if self.stop.is_set() or due >= end:
                break
            worker = threading.Thread(target=self.one, args=(n, begin_wall + (due - begin_mono)))
            worker.start()
            workers.append(worker)
            workers = [w for w in workers if w.is_alive()]
            n += 1
        for worker in workers:
            worker.join(self.args.timeout + 5)
        self.emit({"done": True, "sent": n})


def users(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=443)
    parser.add_argument("--server-name", default="localhost")
    parser.add_argument("--rate", type=float, default=12.0, help="requests per second")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--token-dir", default="/root/stack-tokens")
    parser.add_argument("--readers", type=users, default=[], help="demo user ids, 15,16")
    parser.add_argument("--writers", type=users, default=[], help="demo user ids, 11,12")
    Load(parser.parse_args()).run()


if __name__ == "__main__":
    main()
