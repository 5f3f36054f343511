"""POST /api/auth/token: the OAuth2 password flow, answered with a bearer token."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, status
from fastapi.security import OAuth2PasswordRequestForm

from shop import crud, metrics, schemas
from shop.api.deps import HashSlotsDep, SessionmakerDep, SettingsDep, TokenKeysDep
from shop.core import auth
from shop.core.inputs import Text
from shop.core.security import HashSlotsFullError, verify_password

# The statuses the routes that use these add to their OpenAPI document.
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {
        "model": schemas.Detail,
        "description": "No bearer token, or one that is invalid or expired.",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    }
}
BUSY: dict[int | str, dict[str, Any]] = {
    429: {
        "model": schemas.Detail,
        "description": "Every password hashing slot of the worker stayed busy: retry later.",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    }
}


def not_found(what: str) -> dict[int | str, dict[str, Any]]:
    return {404: {"model": schemas.Detail, "description": f"{what} not found."}}


def busy(retry_after_seconds: int) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        "too many password checks in progress, retry",
        headers={"Retry-After": str(retry_after_seconds)},
    )


class PasswordForm(OAuth2PasswordRequestForm):
    """FastAPI's password-flow form, with the sign-up's bounds on email and password:
    longer values cannot belong to an account, and are refused (422) before any work."""

    def __init__(
        self,
        username: Annotated[Text(max_length=254), Form(description="The account's email.")],
        password: Annotated[
            Text(max_length=128, strip=False), Form(json_schema_extra={"format": "password"})
        ],
        grant_type: Annotated[str | None, Form(pattern="^password$")] = None,
    ) -> None:
        super().__init__(grant_type=grant_type, username=username, password=password)


# The lifespan makes what every authenticated route needs (token keys, hashing slots),
# so this router is part of every app.
router = APIRouter(prefix="/api/auth", tags=["auth"], lifespan=auth.lifespan)


@router.post("/token", responses=UNAUTHORIZED | BUSY)
async def issue_token(
    form: Annotated[PasswordForm, Depends()],
    sessionmaker: SessionmakerDep,
    slots: HashSlotsDep,
    keys: TokenKeysDep,
    settings: SettingsDep,
) -> schemas.Token:
    email = form.username.strip().lower()
    # No connection is held while the password is hashed: a session per statement.
    account = None
    if "\x00" not in email:  # PostgreSQL refuses NUL, and no email holds one
        async with sessionmaker() as session:
            account = await crud.get_credentials(session, email)
    # An unknown email costs one hash too, so that timing does not tell which exist.
    encoded = account.password_hash if account is not None else slots.dummy_hash
    try:
        matches, new_hash = await slots.run(verify_password, form.password, encoded)
    except HashSlotsFullError:
        raise busy(settings.retry_after_seconds) from None
    if account is None or not matches:
        metrics.LOGIN_FAILURES.inc()
        raise auth.unauthorized("incorrect email or password")
    if new_hash is not None:
        # A scrypt hash, or argon2 with outdated parameters: upgraded now that the
        # password is known.
        async with sessionmaker() as session:
            await crud.replace_password_hash(session, account.id, encoded, new_hash)
    return schemas.Token(access_token=keys.issue(account.id), expires_in=keys.ttl_seconds)
