"""Password hashing: argon2id, run in a thread, a bounded number at a time per worker.

A hash costs tens of milliseconds of CPU and 19 MiB: far too long to block the event
loop for (every other request on the worker would wait), hence the thread, and too
much to start without limit, hence the slots (a flood of logins would otherwise queue
a thread per request and take every core from the rest of the service).
"""

import asyncio
import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from shop.core.config import Settings

T = TypeVar("T")

# OWASP Password Storage Cheat Sheet, argon2id minimum: 19 MiB, 2 iterations, 1 lane.
# Hashes made with other parameters are re-made at the next successful login.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)

# Hashes of the first version of the service: scrypt$N$r$p$salt$digest (base64).
_SCRYPT_PREFIX = "scrypt$"
_SCRYPT_MAXMEM = 64 * 1024 * 1024


def hash_password(password: str) -> str:
    """An argon2id hash in PHC format (blocks: call it through HashSlots.run)."""
    return _HASHER.hash(password)


def _verify_scrypt(password: str, encoded: str) -> bool:
    _, n, r, p, salt, digest = encoded.split("$")
    expected = base64.b64decode(digest)
    actual = hashlib.scrypt(
        password.encode(),
        salt=base64.b64decode(salt),
        n=int(n),
        r=int(r),
        p=int(p),
        maxmem=_SCRYPT_MAXMEM,
        dklen=len(expected),
    )
    return hmac.compare_digest(actual, expected)


def verify_password(password: str, encoded: str) -> tuple[bool, str | None]:
    """Whether `password` matches `encoded`, and if it does and `encoded` is a scrypt
    hash or an argon2 hash with outdated parameters, its new argon2id hash (else None).
    Blocks: call it through HashSlots.run."""
    if encoded.startswith(_SCRYPT_PREFIX):
        if not _verify_scrypt(password, encoded):
            return False, None
        return True, _HASHER.hash(password)
    try:
        _HASHER.verify(encoded, password)
    except (VerificationError, InvalidHashError):
        return False, None
    return True, _HASHER.hash(password) if _HASHER.check_needs_rehash(encoded) else None


class HashSlotsFullError(Exception):
    """Every hashing slot of this worker stayed busy for the whole wait (429)."""


class HashSlots:
    """At most `concurrency` hashes at once in this worker; a caller waits for a free
    slot at most `wait_seconds`, then gets HashSlotsFullError.

    Made in the lifespan, after the fork: one per worker process and event loop.
    """

    def __init__(self, concurrency: int, wait_seconds: float) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._wait_seconds = wait_seconds
        # Verified against when the email is unknown, so that an unknown email costs
        # the same time as a wrong password and timing tells no one which emails exist.
        self.dummy_hash = hash_password(secrets.token_urlsafe(16))

    @classmethod
    def from_settings(cls, settings: Settings) -> "HashSlots":
        return cls(settings.password_hash_concurrency, settings.password_hash_wait_seconds)

    async def run(self, func: Callable[..., T], *args: object) -> T:
        try:
            async with asyncio.timeout(self._wait_seconds):
                await self._slots.acquire()
        except TimeoutError:
            raise HashSlotsFullError from None
        # The slot is given back when the thread is done, not when the caller stops
        # waiting for it: a request cancelled by its deadline must not let one more
        # hash start while its own still runs.
        work = asyncio.ensure_future(asyncio.to_thread(func, *args))
        work.add_done_callback(self._release)
        return await asyncio.shield(work)

    def _release(self, work: asyncio.Future) -> None:
        self._slots.release()
        if not work.cancelled():
            work.exception()  # retrieved: an abandoned failure is not logged as unhandled
