"""wrk's command line, Lua scripts and output."""

import re
from dataclasses import dataclass

from benchkit import tokens

_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_NON2XX = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", re.M)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M)
_PERCENTILE = re.compile(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)


def _seconds(value: str, unit: str) -> float:
    return float(value) * _UNITS_S[unit]


def parse(text: str) -> dict:
    """The numbers of one wrk run (run with --latency). Latencies in milliseconds.

    errors counts what failed outright (connect, read, write, timeout); non2xx the
    responses with another status (wrk counts 3xx as success: nothing here redirects).
    """
    requests = _REQUESTS.search(text)
    rps = _RPS.search(text)
    if requests is None or rps is None:
        raise ValueError("not wrk output: no request count or Requests/sec line")
    socket = _SOCKET.search(text)
    connect, read, write, timeout = map(int, socket.groups()) if socket else (0, 0, 0, 0)
    non2xx = _NON2XX.search(text)
    latency = {float(q): _seconds(v, u) * 1000 for q, v, u in _PERCENTILE.findall(text)}
    return {
        "requests": int(requests.group(1)),
        "duration_s": _seconds(requests.group(2), requests.group(3)),
        "rps": float(rps.group(1)),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": {"connect": connect, "read": read, "write": write, "timeout": timeout},
        "errors": connect + read + write + timeout,
        "p50_ms": latency.get(50.0),
        "p99_ms": latency.get(99.0),
    }


def command(url: str, connections: int, duration_s: float, script: str | None, cpu: int) -> list:
    """One thread pinned to one core: the load generator never takes more than that."""
    cmd = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s"]
    cmd += ["--latency", "--timeout", "30s"]
    if script:
        cmd += ["-s", script]
    return [*cmd, url]


# The script kinds that send a user's token: their lua_script needs (id, token) pairs.
READER_KINDS = {"user-orders"}
WRITER_KINDS = {"order-write"}


@dataclass(frozen=True)
class Data:
    """What a script draws its requests from: the id ranges of the data, and the users it
    sends requests as, (id, token) pairs (a user's orders are read as one of the readers,
    orders placed as one of the writers)."""

    users: int
    categories: int
    products: int
    readers: tuple[tuple[int, str], ...] = ()
    writers: tuple[tuple[int, str], ...] = ()


def lua_script(kind: str, data: Data, mix: dict | None = None) -> str:
    """A wrk script for the endpoints whose request changes each time (ids, bodies).

    A user's orders are read with that user's token; an order is placed with a writer's
    token, which says who orders (the body names no user). The file holds the tokens:
    keep it where only the runner reads it.
    """
    readers, writers = data.readers, data.writers
    parts = (mix or {}) if kind == "mix" else {kind: 1}
    if READER_KINDS & set(parts) and not readers:
        raise ValueError(f"{kind} reads a user's orders: it needs readers (id, token)")
    if WRITER_KINDS & set(parts) and not writers:
        raise ValueError(f"{kind} places orders: it needs writers (id, token)")
    script = (
        "-- written by bench/run.py\n"
        f"local users, categories, products = {data.users}, {data.categories}, {data.products}\n"
        "math.randomseed(os.time())\n"
        "local function user() return math.random(1, users) end\n"
        "local function category()\n"
        "  return string.format('cat-%03d', math.random(0, categories - 1))\n"
        "end\n"
        "local function pick(list) return list[math.random(1, #list)] end\n"
    )
    if readers:
        script += f"local readers = {tokens.lua_pairs(readers)}\n"
    if writers:
        headers = {"Content-Type": "application/json"}
        script += f"local writers = {tokens.lua_pairs(writers, headers)}\n"
    script += (
        "local requests = {\n"
        "  popular = function() return wrk.format('GET', '/api/products/popular?limit=10') end,\n"
        "  user = function() return wrk.format('GET', '/api/users/' .. user()) end,\n"
        "  category = function()\n"
        "    return wrk.format('GET', '/api/products?limit=20&category=' .. category())\n"
        "  end,\n"
    )
    if readers:
        script += (
            "  ['user-orders'] = function()\n"
            "    local reader = pick(readers)\n"
            "    return wrk.format('GET', '/api/users/' .. reader[1] .. '/orders', reader[2])\n"
            "  end,\n"
        )
    if writers:
        script += (
            "  ['order-write'] = function()\n"
            '    local body = string.format(\'{"items": [{"product_id": %d, "quantity": %d}]}\',\n'
            "      math.random(1, products), math.random(1, 3))\n"
            "    return wrk.format('POST', '/api/orders', pick(writers)[2], body)\n"
            "  end,\n"
        )
    script += "}\n"
    if kind == "mix":
        wheel = []
        for name, weight in sorted((mix or {}).items()):
            wheel += [f"requests['{name}']"] * int(weight)
        return script + (
            "local wheel = {" + ", ".join(wheel) + "}\n"
            "request = function() return wheel[math.random(1, #wheel)]() end\n"
        )
    if kind in ("user", "user-orders", "category", "order-write"):
        return script + f"request = requests['{kind}']\n"
    raise ValueError(f"no wrk script for {kind}")
