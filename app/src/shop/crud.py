"""Database reads and writes. Every relation a response needs is loaded eagerly."""

from collections.abc import Sequence

from sqlalchemy import Row, Select, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, load_only, selectinload

from shop import schemas
from shop.models import Order, OrderItem, Product, User


class NotFoundError(Exception):
    """Something the request refers to does not exist (404)."""


class ConflictError(Exception):
    """The request clashes with existing data (409)."""


def _user_stmt(user_id: int, lean: bool) -> Select:
    if lean:
        # Only the columns the response shows: no password hash leaves the database.
        return select(User.id, User.name).where(User.id == user_id)
    return select(User).where(User.id == user_id)


def _user_with_orders_stmt(user_id: int, lean: bool) -> Select:
    """Three statements whatever the number of orders: user, orders, items with products.

    selectinload fetches a collection for all parents in one IN query;
    joinedload suits the many-to-one product. The relationships are
    lazy="raise", so a forgotten option fails loudly instead of quietly
    issuing one query per order. Lean: only the columns the response shows.
    """
    if lean:
        options = (
            load_only(User.id, User.name),
            selectinload(User.orders)
            .selectinload(Order.items)
            .joinedload(OrderItem.product)
            .load_only(Product.id, Product.name),
        )
    else:
        options = (
            selectinload(User.orders).selectinload(Order.items).joinedload(OrderItem.product),
        )
    return select(User).where(User.id == user_id).options(*options)


async def get_user(session: AsyncSession, user_id: int, lean: bool = True) -> Row | User | None:
    if lean:
        return (await session.execute(_user_stmt(user_id, lean))).first()
    return await session.scalar(_user_stmt(user_id, lean))


async def get_user_with_orders(
    session: AsyncSession, user_id: int, lean: bool = True
) -> User | None:
    return await session.scalar(_user_with_orders_stmt(user_id, lean))


# The same reads on a synchronous Session (SHOP_BLOCKING_IO): they block the caller.


def get_user_blocking(session: Session, user_id: int, lean: bool = True) -> Row | User | None:
    if lean:
        return session.execute(_user_stmt(user_id, lean)).first()
    return session.scalar(_user_stmt(user_id, lean))


def get_user_with_orders_blocking(session: Session, user_id: int, lean: bool = True) -> User | None:
    return session.scalar(_user_with_orders_stmt(user_id, lean))


async def create_user(session: AsyncSession, data: schemas.UserCreate, password_hash: str) -> None:
    """Adds the user unless the email is taken, and then writes nothing: the caller
    cannot tell the two apart (sign-up must not reveal which emails have accounts)."""
    stmt = (
        insert(User)
        .values(name=data.name, email=data.email, password_hash=password_hash)
        .on_conflict_do_nothing(index_elements=[User.email])
    )
    await session.execute(stmt)
    await session.commit()


async def get_credentials(session: AsyncSession, email: str) -> Row | None:
    """(id, password_hash) of the user with this email, for a login."""
    stmt = select(User.id, User.password_hash).where(User.email == email)
    return (await session.execute(stmt)).first()


async def replace_password_hash(session: AsyncSession, user_id: int, old: str, new: str) -> None:
    """Stores a rehashed password, unless the hash changed since it was read."""
    stmt = (
        update(User).where(User.id == user_id, User.password_hash == old).values(password_hash=new)
    )
    await session.execute(stmt)
    await session.commit()


async def popular_products(session: AsyncSession, limit: int) -> list[schemas.PopularProduct]:
    """The `limit` best sellers by units sold, ties by product id.

    Order items are summed per product first and only the top `limit` sums meet
    the products table: joining every order item to its product before grouping
    would drag each product's columns through the aggregate of all sales."""
    sold = func.sum(OrderItem.quantity).label("sold")
    top = (
        select(OrderItem.product_id, sold)
        .group_by(OrderItem.product_id)
        .order_by(sold.desc(), OrderItem.product_id)
        .limit(limit)
        .subquery()
    )
    stmt = (
        select(Product.id, Product.name, Product.category, Product.price_cents, top.c.sold)
        .join(top, top.c.product_id == Product.id)
        .order_by(top.c.sold.desc(), Product.id)
    )
    rows = (await session.execute(stmt)).all()
    return [schemas.PopularProduct.model_validate(row) for row in rows]


async def products_page(
    session: AsyncSession, category: str, after: int, limit: int
) -> schemas.ProductPage:
    """Keyset pagination on (category, id): every page costs one index range scan,
    where OFFSET would read and discard all earlier rows."""
    stmt = (
        select(Product)
        .where(Product.category == category, Product.id > after)
        .order_by(Product.id)
        .limit(limit + 1)
    )
    products: Sequence[Product] = (await session.scalars(stmt)).all()
    has_more = len(products) > limit
    page = products[:limit]
    return schemas.ProductPage(
        items=[schemas.ProductOut.model_validate(p) for p in page],
        next_cursor=page[-1].id if has_more else None,
    )


async def create_order(
    session: AsyncSession, user_id: int, data: schemas.OrderCreate, lean: bool = True
) -> Order:
    # The token was valid, but its user may have been deleted since it was issued.
    if await session.scalar(select(User.id).where(User.id == user_id)) is None:
        raise NotFoundError(f"user {user_id} not found")

    wanted = [item.product_id for item in data.items]
    stmt = select(Product).where(Product.id.in_(wanted))
    if lean:
        stmt = stmt.options(load_only(Product.id, Product.name, Product.price_cents))
    found = {p.id: p for p in await session.scalars(stmt)}
    missing = [product_id for product_id in wanted if product_id not in found]
    if missing:
        raise NotFoundError(f"product(s) not found: {', '.join(map(str, missing))}")

    order = Order(
        user_id=user_id,
        items=[
            OrderItem(
                product=found[item.product_id],
                quantity=item.quantity,
                unit_price_cents=found[item.product_id].price_cents,
            )
            for item in data.items
        ],
    )
    session.add(order)
    try:
        await session.commit()
    except IntegrityError as exc:
        # The user or a product was deleted between the checks and the insert.
        await session.rollback()
        raise ConflictError("the order refers to data that changed; retry") from exc
    return order
