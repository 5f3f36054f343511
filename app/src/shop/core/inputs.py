"""Types for what clients send: a value PostgreSQL would refuse is a 422 before any query.

PostgreSQL refuses a NUL character in text (SQLSTATE 22021) and integers past its
column's range; a lone surrogate ("\\ud800" in JSON) is not Unicode text at all and
cannot even be encoded for the wire. Such a value reaching the database costs a
connection and a round trip and turns the client's mistake into a database error, so
every string a route accepts is a `Text` (bounded to its column's length) and every
integer is bounded to its column's type.
"""

from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints
from pydantic_core import PydanticCustomError

# PostgreSQL `integer` (the type of every id column).
INT32_MAX = 2**31 - 1
Id = Annotated[int, Field(ge=1, le=INT32_MAX)]


def plain_text(value: str) -> str:
    """The value, if PostgreSQL can store it as text: no NUL, no lone surrogate."""
    if "\x00" in value:
        raise PydanticCustomError("string_nul", "String should not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError(
            "string_surrogate", "String should not contain lone surrogates"
        ) from None
    return value


# Named like a type: it is used as one (as pydantic's constr() was).
def Text(
    *,
    max_length: int,
    min_length: int = 1,
    strip: bool = True,
    lower: bool = False,
    pattern: str | None = None,
) -> Any:
    """A string type for a text column of `max_length` characters (PostgreSQL counts
    characters, as pydantic does). Leading and trailing whitespace is stripped first
    unless `strip` is false; `lower` lowercases; `pattern` must match the result."""
    return Annotated[
        str,
        StringConstraints(
            strip_whitespace=strip,
            to_lower=lower,
            min_length=min_length,
            max_length=max_length,
            pattern=pattern,
        ),
        AfterValidator(plain_text),
    ]
