"""rrproxy: Node.js's cluster module for Python web apps.

The public handler API::

    from rrproxy import Request, Response

    async def handler(request: Request) -> Response:
        return Response(200, b"hi", {"content-type": "text/plain"})

and the Python API for starting it (rrproxy.api)::

    rrproxy.run("app:handler", workers=4, port=8000)
"""

from typing import TYPE_CHECKING, Any

from . import cluster, state
from .native import BodyTooLarge, ClientDisconnected, Headers, Request, Response

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api import Config, run
    from .config import ConfigError


def __getattr__(name: str) -> Any:
    # Imported on first use: a worker importing `rrproxy` for Request/Response does
    # not pay for the option table and argparse.
    if name in ("Config", "run"):
        from . import api

        return getattr(api, name)
    if name == "ConfigError":
        from .config import ConfigError

        return ConfigError
    raise AttributeError(f"module 'rrproxy' has no attribute {name!r}")


__all__ = [
    "BodyTooLarge",
    "ClientDisconnected",
    "Config",
    "ConfigError",
    "Headers",
    "Request",
    "Response",
    "__version__",
    "cluster",
    "run",
    "state",
]
