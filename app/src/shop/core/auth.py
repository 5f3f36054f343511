"""Bearer tokens: HS256 JWTs naming the user, checked without a database query.

A token is signed with SHOP_TOKEN_SECRET and carries sub (the user id), iat and exp.
Checking one costs an HMAC and a clock read, so authenticated reads stay as cheap as
anonymous ones. Rotation: the new key signs, the old one (SHOP_TOKEN_PREVIOUS_SECRET)
still verifies the tokens it signed until they expire, one token lifetime; the operator
then removes it.
"""

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import jwt
from fastapi import FastAPI, HTTPException, status
from fastapi.security import OAuth2PasswordBearer

from shop.core.config import Settings
from shop.core.security import HashSlots

ALGORITHM = "HS256"
# Clocks of several app hosts differ a little: a token issued on one is not refused by
# another as "issued in the future", nor at its expiry a second early.
_LEEWAY_SECONDS = 10

# Reads `Authorization: Bearer <token>`; without one, 401 with WWW-Authenticate: Bearer.
# tokenUrl is what the OpenAPI document (and /docs) offers to get a token.
bearer_token = OAuth2PasswordBearer(tokenUrl="/api/auth/token")


class MissingTokenSecretError(RuntimeError):
    """The app cannot start: it has no key to sign tokens with."""


class InvalidTokenError(Exception):
    """Not a token this service issued, or an expired one."""


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


class TokenKeys:
    """Issues tokens with the current key; accepts the current and the previous one."""

    def __init__(self, settings: Settings) -> None:
        if settings.token_secret is None:
            raise MissingTokenSecretError(
                "SHOP_TOKEN_SECRET is not set: the service signs its bearer tokens with it."
                " Set it to a random string of at least 32 characters, for example the"
                " output of: python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        self._signing_key = settings.token_secret.get_secret_value()
        self._keys = [self._signing_key]
        if settings.token_previous_secret is not None:
            self._keys.append(settings.token_previous_secret.get_secret_value())
        self.ttl_seconds = settings.token_ttl_seconds

    def issue(self, user_id: int) -> str:
        now = int(time.time())
        claims = {"sub": str(user_id), "iat": now, "exp": now + self.ttl_seconds}
        return jwt.encode(claims, self._signing_key, algorithm=ALGORITHM)

    def user_id(self, token: str) -> int:
        """The user a token names, if one of the keys signed it and it has not expired."""
        for key in self._keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[ALGORITHM],
                    options={"require": ["sub", "iat", "exp"]},
                    leeway=_LEEWAY_SECONDS,
                )
            except jwt.InvalidSignatureError:
                continue  # perhaps signed with the other key
            except jwt.InvalidTokenError as exc:
                # Malformed, expired, or a claim missing: no other key changes that.
                raise InvalidTokenError(str(exc)) from exc
            subject = claims["sub"]
            if not (subject.isascii() and subject.isdecimal()):
                raise InvalidTokenError("sub is not a user id")
            return int(subject)
        raise InvalidTokenError("signed with an unknown key")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Per worker, after the fork: the token keys and the password hashing slots.

    Without a signing key the worker does not start: Gunicorn stops with the message
    above instead of serving 500s to every login.
    """
    settings: Settings = app.state.settings
    app.state.token_keys = TokenKeys(settings)
    app.state.hash_slots = HashSlots.from_settings(settings)
    yield
