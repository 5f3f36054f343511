"""fastapi-shop: a small shop API that shows the FastAPI performance tips."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fastapi-shop")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
