"""Request and response models.

Responses carry only what clients need (no email, no password hash), and
routes declare them as return types so FastAPI validates and serializes them
in pydantic-core instead of going through jsonable_encoder.
"""

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Every string and number a client sends is one of these types: a value PostgreSQL
# would refuse (a NUL, a lone surrogate, an integer past its columns, a string longer
# than its column) is a 422 before any query. A larger id is simply unknown.
from shop.core.inputs import INT32_MAX as INT32_MAX
from shop.core.inputs import Id, Text

# The users table's columns: name varchar(100), email varchar(254).
UserName = Text(max_length=100)
Email = Text(max_length=254, lower=True, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Not stripped: spaces count. Bounded: hashing a huge password is a CPU sink.
Password = Text(min_length=8, max_length=128, strip=False)


class ORMModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class UserOut(ORMModel):
    id: int
    name: str


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: UserName
    email: Email
    password: Password


class ProductOut(ORMModel):
    id: int
    name: str
    category: str
    price_cents: int


class PopularProduct(ProductOut):
    sold: int


class ProductPage(BaseModel):
    items: list[ProductOut]
    # Pass as ?after= to get the next page; null on the last page.
    next_cursor: int | None


class ProductRef(ORMModel):
    id: int
    name: str


class OrderItemOut(ORMModel):
    product: ProductRef
    quantity: int
    unit_price_cents: int


class OrderOut(ORMModel):
    id: int
    created_at: datetime
    total_cents: int
    items: list[OrderItemOut]


class CreatedOrder(OrderOut):
    user_id: int


class UserWithOrders(UserOut):
    orders: list[OrderOut]


# Full models (SHOP_LEAN_MODELS=false): every column of every row a response reads,
# nested objects in full, as an app that returns its table rows would. Still no
# secrets: the password hash has no field here.


class UserFull(ORMModel):
    id: int
    name: str
    email: str
    created_at: datetime


class OrderItemFull(ORMModel):
    id: int
    order_id: int
    product_id: int
    quantity: int
    unit_price_cents: int
    product: ProductOut


class OrderFull(ORMModel):
    id: int
    user_id: int
    created_at: datetime
    total_cents: int
    items: list[OrderItemFull]


class UserWithOrdersFull(UserFull):
    orders: list[OrderFull]


class OrderItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product_id: Id
    quantity: Annotated[int, Field(ge=1, le=1000)]


class OrderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # No user_id: the order is the caller's (the bearer token says who), and a user_id
    # in the body is refused (extra="forbid").
    items: Annotated[list[OrderItemIn], Field(min_length=1, max_length=100)]

    @field_validator("items")
    @classmethod
    def _one_line_per_product(cls, items: list[OrderItemIn]) -> list[OrderItemIn]:
        seen: set[int] = set()
        for item in items:
            if item.product_id in seen:
                raise ValueError(f"product {item.product_id} is listed twice; sum the quantities")
            seen.add(item.product_id)
        return items


class Health(BaseModel):
    status: str
    release: str


class Readiness(BaseModel):
    status: str
    database: str
    redis: str


class Detail(BaseModel):
    """The body of every error answer, and of the sign-up's 202."""

    detail: str


class Token(BaseModel):
    """The answer of POST /api/auth/token (RFC 6749, 5.1)."""

    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    # Seconds until the token expires.
    expires_in: int
