"""Bearer tokens for the points that need them (issue 17): a user's orders and order writes.

Only the seed's demo accounts can log in (user<N>@example.com, whose id is N, all with the
public demo password; the bench data's own users have none). The runner logs a fixed
sample of them in through nginx, as any client would, and hands (id, token) pairs to the
load generators. The sample is the same in every run, and split in two:

- writers, the last demo users: order writes go to them only;
- readers, spread evenly over the others: the user-orders reads are theirs.

Kept apart, a run's thousands of order writes never land on the users whose orders the
next run (or the next round) reads, so reads cost what the seed's data makes them cost.
"""

import json
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

# shop.seed.DEMO_PASSWORD: the demo accounts' password is public demo data, not a secret.
DEMO_PASSWORD = "demo-password"  # noqa: S105
# What the peer, which reads no header, is sent instead of a token.
PLACEHOLDER = "peer-reads-no-token"
# What may stand in a Lua string literal between single quotes: a JWT is base64url and dots.
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]+")


def email(user: int) -> str:
    return f"user{user}@example.com"


def split_sample(demo_ids: list[int], readers: int, writers: int) -> tuple[list[int], list[int]]:
    """(readers, writers): the last `writers` demo users write; `readers` others, spread
    evenly over the rest (each from the middle of its stride), read. Deterministic."""
    ids = sorted(demo_ids)
    if len(ids) < writers + 1:
        raise ValueError(f"{len(ids)} demo users: too few for {writers} writers and a reader")
    rest = ids[: len(ids) - writers]
    picked = (
        rest
        if readers >= len(rest)
        else [rest[int((i + 0.5) * len(rest) / readers)] for i in range(readers)]
    )
    return picked, ids[len(ids) - writers :]


def _context(url: str) -> ssl.SSLContext | None:
    if not url.startswith("https:"):
        return None
    # The stack's certificate is its own (self-signed in the local environment).
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def log_in(
    base_url: str,
    user: int,
    password: str = DEMO_PASSWORD,
    wait_s: float = 60.0,
    sleep=time.sleep,
) -> tuple[str, int]:
    """One demo user's (token, lifetime in seconds), through POST /api/auth/token.

    Password hashing is slow on purpose and bounded per worker: a 429 (from the app's
    hashing slots, or nginx's zone) is waited out as its Retry-After asks (else 1 s, at
    most 10 s a time), for wait_s seconds in all. Any other refusal raises RuntimeError.
    """
    form = urllib.parse.urlencode({"username": email(user), "password": password}).encode()
    deadline = time.monotonic() + wait_s
    while True:
        request = urllib.request.Request(f"{base_url}/api/auth/token", data=form)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=30, context=_context(base_url)) as r:  # noqa: S310
                answer = json.loads(r.read())
            break
        except urllib.error.HTTPError as error:
            detail = error.read()[:200].decode("utf-8", "replace")
            if error.code != 429 or time.monotonic() > deadline:
                raise RuntimeError(f"{email(user)} not logged in: {error.code} {detail}") from None
            retry = error.headers.get("Retry-After") or "1"
            sleep(min(float(retry) if retry.replace(".", "", 1).isdigit() else 1.0, 10.0))
        except (OSError, ValueError) as error:
            raise RuntimeError(f"{email(user)} not logged in: {error}") from None
    token = answer.get("access_token", "")
    if not _TOKEN.fullmatch(token):
        raise RuntimeError(f"{email(user)}: the answer holds no usable access_token")
    return token, int(answer.get("expires_in") or 0)


def log_in_all(
    base_url: str, users: list[int], concurrency: int = 2, **kwargs
) -> tuple[list[tuple[int, str]], int]:
    """(user, token) pairs for every user, a few logins at a time, and the shortest
    lifetime among them (seconds)."""
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        answers = list(pool.map(lambda user: log_in(base_url, user, **kwargs), users))
    pairs = [(user, token) for user, (token, _) in zip(users, answers, strict=True)]
    return pairs, min((lifetime for _, lifetime in answers), default=0)


def lua_pairs(pairs: list[tuple[int, str]], extra_headers: dict[str, str] | None = None) -> str:
    """A Lua table of {id, headers} for a wrk script; the headers table is built once per
    user (wrk.format only sets Host and Content-Length in it)."""
    rows = []
    for user, token in pairs:
        if not _TOKEN.fullmatch(token):
            raise ValueError(f"token of user {user} is not a plain token string")
        headers = {"Authorization": f"Bearer {token}", **(extra_headers or {})}
        fields = ", ".join(f"['{name}'] = '{value}'" for name, value in headers.items())
        rows.append(f"  {{{int(user)}, {{{fields}}}}},\n")
    return "{\n" + "".join(rows) + "}"
