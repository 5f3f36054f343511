"""Property-based tests generated from the app's own OpenAPI document (schemathesis).

For every operation the document lists, schemathesis generates requests (valid ones,
and ones that break the schema on purpose: wrong types, values out of range, missing
fields, strings with NUL characters) and sends them to the app in-process, with the
real PostgreSQL and Redis of the other tests behind it. Every answer must be one the
operation declares, with the declared body and headers, and none may be a 5xx: with
its dependencies up, the app serves a request or refuses it with a 4xx.

Bounded and reproducible: a fixed number of examples per operation, a fixed seed, no
Hypothesis deadline (the machine is shared), no example database.
"""

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shop.core.config import Settings
from shop.main import create_app
from tests.conftest import insert_products
from tests.test_input_validation import bearer_headers, seed_user

EXAMPLES_PER_OPERATION = 25
SEED = 17

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def seeded(database_url: str) -> dict[str, Any]:
    """A user and a few products, so that some generated ids and categories exist."""

    async def seed() -> dict[str, Any]:
        user = await seed_user(database_url)
        products = await insert_products(
            database_url, [(f"P{n}", "office" if n % 2 else "ink", 100 * n) for n in range(1, 6)]
        )
        return {"user": user, "products": products}

    return asyncio.run(seed())


def _cases() -> list[Any]:
    """(method, path, mode) for every operation of the document, known when the tests are
    collected: positive and, where the operation takes any input, negative."""
    document = create_app(Settings(_env_file=None)).openapi()
    cases = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            modes = [GenerationMode.POSITIVE]
            if operation.get("parameters") or operation.get("requestBody"):
                modes.append(GenerationMode.NEGATIVE)
            cases += [
                pytest.param(method.upper(), path, mode, id=f"{method.upper()} {path} {mode}")
                for mode in modes
            ]
    return cases


@pytest.fixture
def api(settings: Settings, seeded: dict[str, Any]) -> Iterator[schemathesis.BaseSchema]:
    """The app's OpenAPI document, its requests sent to the app in-process. schemathesis
    runs the app's lifespan, and every request, on one event loop of its own."""
    config = schemathesis.Config.from_dict({"seed": SEED})
    app = create_app(settings)
    yield schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    asgi.shutdown_lifespans()


@pytest.fixture
def auth_headers(settings: Settings, seeded: dict[str, Any]) -> dict[str, str]:
    return bearer_headers(settings, seeded["user"])


@pytest.mark.parametrize(("method", "path", "mode"), _cases())
def test_every_answer_is_declared_and_none_is_a_server_error(
    api: schemathesis.BaseSchema,
    auth_headers: dict[str, str],
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    """Positive: requests the document allows; negative: requests it does not."""
    operation = api[path][method]
    strategy = operation.as_strategy(generation_mode=mode, headers=auth_headers)

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def every_answer(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS)

    every_answer()
