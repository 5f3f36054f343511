import http.server
import json
import re
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from benchkit import tokens

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_password_is_the_seeds():
    seed = (ROOT / "app/src/shop/seed.py").read_text()
    assert re.search(r'^DEMO_PASSWORD = "([^"]*)"', seed, re.M)[1] == tokens.DEMO_PASSWORD


def test_sample_writers_are_the_last_demo_users_and_never_read():
    readers, writers = tokens.split_sample(list(range(1, 1001)), 64, 16)
    assert writers == list(range(985, 1001))
    assert len(readers) == 64 and len(set(readers)) == 64
    assert not set(readers) & set(writers)
    # Spread over the others, not bunched at the start.
    assert readers[0] < 16 and readers[-1] > 950
    # The same users in every run, and the smoke run's readers keep off the writers too.
    assert tokens.split_sample(list(range(1000, 0, -1)), 64, 16) == (readers, writers)
    smoke, smoke_writers = tokens.split_sample(list(range(1, 1001)), 16, 16)
    assert smoke_writers == writers and not set(smoke) & set(writers)


def test_sample_of_a_small_seed_reads_every_other_user():
    assert tokens.split_sample([1, 2, 3, 4, 5], 64, 2) == ([1, 2, 3], [4, 5])
    with pytest.raises(ValueError, match="too few"):
        tokens.split_sample([1, 2], 4, 2)


class _Login(http.server.BaseHTTPRequestHandler):
    """POST /api/auth/token as the contract says; the first `busy` calls get a 429."""

    busy = 0
    calls: list
    active = 0
    most = 0
    lock = threading.Lock()

    def do_POST(self):
        cls = type(self)
        with cls.lock:
            cls.active += 1
            cls.most = max(cls.most, cls.active)
            cls.calls.append((self.headers["Content-Type"], self.path))
            busy = cls.busy > 0
            cls.busy -= 1
        length = int(self.headers["Content-Length"])
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        time.sleep(0.02)
        if busy:
            status, body, extra = 429, {"detail": "busy"}, {"Retry-After": "0"}
        elif form.get("password") != tokens.DEMO_PASSWORD:
            status, body, extra = 401, {"detail": "incorrect email or password"}, {}
        else:
            user = form["username"].split("@")[0]
            body = {"access_token": f"tok.{user}.sig", "token_type": "bearer", "expires_in": 900}
            status, extra = 200, {}
        data = json.dumps(body).encode()
        # Done before the answer leaves: once the client has it, it may send the next
        # login before this thread runs again (a loaded machine counted 3 at a time).
        with cls.lock:
            cls.active -= 1
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def login_server():
    handler = type("Login", (_Login,), {"calls": [], "busy": 0, "active": 0, "most": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", handler
    server.shutdown()


def test_log_in_waits_out_429_as_retry_after_asks(login_server):
    url, handler = login_server
    handler.busy = 2
    slept = []
    token, lifetime = tokens.log_in(url, 7, sleep=slept.append)
    assert (token, lifetime) == ("tok.user7.sig", 900)
    assert slept == [0.0, 0.0]
    assert handler.calls[0] == ("application/x-www-form-urlencoded", "/api/auth/token")


def test_log_in_refused_names_the_user_not_the_password(login_server):
    url, _ = login_server
    wrong = "not-" + tokens.DEMO_PASSWORD
    with pytest.raises(RuntimeError, match=r"user3@example\.com not logged in: 401") as refused:
        tokens.log_in(url, 3, password=wrong)
    assert wrong not in str(refused.value)


def test_log_in_gives_up_when_429s_last(login_server):
    url, handler = login_server
    handler.busy = 1000
    with pytest.raises(RuntimeError, match="429"):
        tokens.log_in(url, 1, wait_s=0.2, sleep=lambda s: time.sleep(0.05))


def test_log_in_all_keeps_the_order_and_a_few_logins_at_a_time(login_server):
    url, handler = login_server
    pairs, lifetime = tokens.log_in_all(url, [5, 9, 2, 30, 41, 6], concurrency=2)
    assert pairs == [(u, f"tok.user{u}.sig") for u in (5, 9, 2, 30, 41, 6)]
    assert lifetime == 900
    assert handler.most <= 2


def test_lua_pairs_carry_each_users_header_and_refuse_odd_tokens():
    table = tokens.lua_pairs([(3, "a.b.c")], {"Content-Type": "application/json"})
    assert (
        "{3, {['Authorization'] = 'Bearer a.b.c', ['Content-Type'] = 'application/json'}}" in table
    )
    with pytest.raises(ValueError):
        tokens.lua_pairs([(3, "a'..os.exit()..'")])
