"""A template-like peer of the shop service, for the benchmark only.

Modelled on fastapi/full-stack-fastapi-template's backend: plain `def` endpoints that
FastAPI runs in its thread pool, a synchronous SQLAlchemy session per request
(`SessionDep`) on psycopg 3 with the engine's default pool (QueuePool, 5 + 10 overflow),
ORM relationships loaded lazily on access, no cache, static files served by the app.
It answers the shop's endpoints with the shop's JSON (see bench/README.md).
"""

import os
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Path, Query
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ForeignKey, String, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

engine = create_engine(os.environ["PEER_DATABASE_URL"])
RELEASE = os.environ.get("PEER_RELEASE", "peer")
STATIC_DIR = os.environ.get("PEER_STATIC_DIR", "static")
INT32_MAX = 2**31 - 1


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    orders: Mapped[list["Order"]] = relationship(back_populates="user", order_by="Order.id")


class Product(Base):
    __tablename__ = "products"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(50))
    price_cents: Mapped[int]


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    user: Mapped[User] = relationship(back_populates="orders")
    items: Mapped[list["OrderItem"]] = relationship(order_by="OrderItem.id")

    @property
    def total_cents(self) -> int:
        return sum(item.quantity * item.unit_price_cents for item in self.items)


class OrderItem(Base):
    __tablename__ = "order_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    quantity: Mapped[int]
    unit_price_cents: Mapped[int]
    product: Mapped[Product] = relationship()


def get_db() -> Iterator[Session]:
    with Session(engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]


class ORM(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class UserOut(ORM):
    id: int
    name: str


class ProductOut(ORM):
    id: int
    name: str
    category: str
    price_cents: int


class PopularProduct(ProductOut):
    sold: int


class ProductPage(BaseModel):
    items: list[ProductOut]
    next_cursor: int | None


class ProductRef(ORM):
    id: int
    name: str


class OrderItemOut(ORM):
    product: ProductRef
    quantity: int
    unit_price_cents: int


class OrderOut(ORM):
    id: int
    created_at: datetime
    total_cents: int
    items: list[OrderItemOut]


class CreatedOrder(OrderOut):
    user_id: int


class UserWithOrders(UserOut):
    orders: list[OrderOut]


class OrderItemIn(BaseModel):
    product_id: Annotated[int, Field(ge=1, le=INT32_MAX)]
    quantity: Annotated[int, Field(ge=1, le=1000)]


class OrderCreate(BaseModel):
    # The peer leaves authentication out (bench/README.md): it reads no token, so it cannot
    # know who orders. The bench's order body names no user, as the shop requires; such an
    # order is the first user's.
    user_id: Annotated[int, Field(ge=1, le=INT32_MAX)] = 1
    items: Annotated[list[OrderItemIn], Field(min_length=1, max_length=100)]


app = FastAPI(title="shop-peer")
UserId = Annotated[int, Path(ge=1, le=INT32_MAX)]


@app.get("/health/live")
def live() -> dict[str, str]:
    return {"status": "ok", "release": RELEASE}


@app.get("/api/products/popular", response_model=list[PopularProduct])
def popular_products(session: SessionDep, limit: Annotated[int, Query(ge=1, le=100)] = 10):
    sold = func.sum(OrderItem.quantity).label("sold")
    stmt = (
        select(Product.id, Product.name, Product.category, Product.price_cents, sold)
        .join(OrderItem, OrderItem.product_id == Product.id)
        .group_by(Product.id)
        .order_by(sold.desc(), Product.id)
        .limit(limit)
    )
    return session.execute(stmt).all()


@app.get("/api/products", response_model=ProductPage)
def list_products(
    session: SessionDep,
    category: Annotated[str, Query(min_length=1, max_length=50)],
    after: Annotated[int, Query(ge=0, le=INT32_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
):
    stmt = (
        select(Product)
        .where(Product.category == category, Product.id > after)
        .order_by(Product.id)
        .limit(limit + 1)
    )
    products = session.scalars(stmt).all()
    page = products[:limit]
    return {"items": page, "next_cursor": page[-1].id if len(products) > limit else None}


@app.get("/api/users/{user_id}", response_model=UserOut)
def read_user(user_id: UserId, session: SessionDep):
    user = session.get(User, user_id)
    if user is None:
        raise HTTPException(404, f"user {user_id} not found")
    return user


@app.get("/api/users/{user_id}/orders", response_model=UserWithOrders)
def read_user_orders(user_id: UserId, session: SessionDep):
    user = session.get(User, user_id)
    if user is None:
        raise HTTPException(404, f"user {user_id} not found")
    return user


@app.post("/api/orders", status_code=201, response_model=CreatedOrder)
def create_order(data: OrderCreate, session: SessionDep):
    if session.get(User, data.user_id) is None:
        raise HTTPException(404, f"user {data.user_id} not found")
    order = Order(user_id=data.user_id)
    for line in data.items:
        product = session.get(Product, line.product_id)
        if product is None:
            raise HTTPException(404, f"product(s) not found: {line.product_id}")
        order.items.append(
            OrderItem(product=product, quantity=line.quantity, unit_price_cents=product.price_cents)
        )
    session.add(order)
    session.commit()
    session.refresh(order)
    return order


app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
