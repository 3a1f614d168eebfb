"""rrproxy: Node.js's cluster module for Python web apps.

The public handler API::

    from rrproxy import Request, Response

    async def handler(request: Request) -> Response:
        return Response(200, b"hi", {"content-type": "text/plain"})
"""

from . import cluster, state
from .native import BodyTooLarge, ClientDisconnected, Headers, Request, Response

__version__ = "0.1.0"

__all__ = [
    "BodyTooLarge",
    "ClientDisconnected",
    "Headers",
    "Request",
    "Response",
    "__version__",
    "cluster",
    "state",
]
