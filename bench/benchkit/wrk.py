"""wrk's command line, Lua scripts and output."""

import re

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


def lua_script(
    kind: str, users: int, categories: int, products: int, mix: dict | None = None
) -> str:
    """A wrk script for the endpoints whose request changes each time (ids, bodies)."""
    header = (
        "-- written by bench/run.py\n"
        f"local users, categories, products = {users}, {categories}, {products}\n"
        "math.randomseed(os.time())\n"
        "local function user() return math.random(1, users) end\n"
        "local function category()\n"
        "  return string.format('cat-%03d', math.random(0, categories - 1))\n"
        "end\n"
        "local paths = {\n"
        "  popular = function() return '/api/products/popular?limit=10' end,\n"
        "  user = function() return '/api/users/' .. user() end,\n"
        "  ['user-orders'] = function() return '/api/users/' .. user() .. '/orders' end,\n"
        "  category = function() return '/api/products?limit=20&category=' .. category() end,\n"
        "}\n"
    )
    if kind == "order-write":
        return header + (
            "wrk.method = 'POST'\n"
            "wrk.headers['Content-Type'] = 'application/json'\n"
            "request = function()\n"
            '  local body = string.format(\'{"user_id": %d, "items": '
            '[{"product_id": %d, "quantity": %d}]}\', user(), math.random(1, products),'
            " math.random(1, 3))\n"
            "  return wrk.format(nil, '/api/orders', nil, body)\n"
            "end\n"
        )
    if kind == "mix":
        table = []
        for name, weight in sorted((mix or {}).items()):
            table += [f"paths['{name}']"] * int(weight)
        return header + (
            "local wheel = {" + ", ".join(table) + "}\n"
            "request = function()\n"
            "  return wrk.format('GET', wheel[math.random(1, #wheel)]())\n"
            "end\n"
        )
    if kind in ("user", "user-orders", "category"):
        return header + (
            f"request = function()\n  return wrk.format('GET', paths['{kind}']())\nend\n"
        )
    raise ValueError(f"no wrk script for {kind}")
