"""Native handlers and their Response objects: running a handler (Request in,
Response out), and writing a Response, whole or streamed. ASGI and WSGI use
`internal_error` and `send_response` for the 500 they send when an app fails before
its response started."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import h11

from ..errors import BodyTooLarge, ClientDisconnected, MalformedBody
from ..native import Headers, InvalidResponse, Request, Response, coerce_response
from ..protocol.http import encode_header_pairs, error_body
from ..protocol.http11 import InvalidResponse as UnsendableResponse
from ..state.backend import StateFull, StateUnavailable

if TYPE_CHECKING:
    from .backend import Backend
    from .connection import HTTPConnection

log = logging.getLogger("rrproxy.worker")


class NativeAdapter:
    """How a request reaches a native handler (the server's default adapter)."""

    async def serve(self, connection: HTTPConnection, request: h11.Request) -> bool:
        """Run the handler for `request`; True if the connection may go on."""
        return await run_native(connection, request)


async def run_native(connection: HTTPConnection, request: h11.Request) -> bool:
    """A native handler: Request in, Response out; True if the connection may go on."""
    server = connection.server
    native = Request(
        method=request.method.decode("ascii"),
        target=request.target,
        headers=Headers(connection.core.headers),
        client=connection.effective_client(request),
        http_version=request.http_version.decode("ascii"),
        worker_id=server.worker_id,
        read_chunk=connection.read_body_chunk,
    )
    try:
        result = server.handler(native)
        if server.handler_is_async or hasattr(result, "__await__"):
            result = await result
        response = coerce_response(result)
    except BodyTooLarge:
        return await connection.send_error(413)
    except MalformedBody as exc:
        return await connection.send_error(exc.status)
    except (StateUnavailable, StateFull) as exc:
        log.error("%s %s: %s", native.method, native.path, exc)
        code = 507 if isinstance(exc, StateFull) else 503
        response = Response(code, error_body(code), [("content-type", "text/plain")])
    except ClientDisconnected:
        raise
    except InvalidResponse as exc:
        log.error("%s %s: %s", native.method, native.path, exc)
        response = internal_error(connection, exc)
    except BaseException as exc:
        if not is_app_error(server.backend, exc):
            raise  # the loop's cancellation
        log.exception("handler raised for %s %s", native.method, native.path)
        response = internal_error(connection, exc)
    if connection.core.body_broken:
        # The body was malformed and the handler swallowed the error.
        error = connection.core.framing.error
        return await connection.send_error(error.status if error is not None else 400)
    return await send_response(connection, response, request.method == b"HEAD")


#: What an app raises that ends only its request: a sys.exit() or KeyboardInterrupt in a
#: handler must not end the worker and every other request on it (uvicorn answers 500).
APP_ERRORS = (Exception, SystemExit, KeyboardInterrupt)


def is_app_error(backend: Backend, exc: BaseException) -> bool:
    """Whether `exc`, raised by app code, is the app's error (answered 500 or 1011)
    rather than the loop's cancellation of its task, which must propagate: one of
    APP_ERRORS, or an asyncio CancelledError the app raised on its own (a task it
    cancelled, then awaited) while its task was not being cancelled."""
    return isinstance(exc, APP_ERRORS) or backend.stray_cancellation(exc)


def internal_error(connection: HTTPConnection, exc: BaseException) -> Response:
    """The 500 for an exception of the app: the traceback in the body under --debug."""
    body = error_body(500)
    if connection.server.config.debug:
        import traceback

        body += "".join(traceback.format_exception(exc)).encode("utf-8", "replace")
    return Response(500, body, [("content-type", "text/plain; charset=utf-8")])


async def send_response(connection: HTTPConnection, response: Response, head: bool) -> bool:
    """A native Response, whole or streamed; True if the connection may go on."""
    core = connection.core
    body = response.body
    status = response.status
    streaming = not isinstance(body, bytes | str | bytearray)
    try:
        # Everything here comes from user code and may be unusable in ways h11 never
        # sees: a header that is not latin-1 (UnicodeEncodeError), `Response("200")`
        # or a header that is no (name, value) pair (TypeError, ValueError...). Any
        # of them is a 500 now, before a byte has gone out, not a dropped connection.
        if not isinstance(status, int):  # (an IntEnum such as HTTPStatus is fine)
            raise TypeError(f"status {status!r} is not an int")
        if streaming and not hasattr(body, "__aiter__"):
            raise TypeError(f"body {type(body).__name__} is not bytes, str or async iterable")
        if isinstance(body, str):
            body = body.encode("utf-8")  # (lone surrogates: UnicodeEncodeError)
        data = core.response(
            status,
            encode_header_pairs(response.headers),
            None if streaming else bytes(body),  # type: ignore[arg-type]  # bytes here
            head=head,
            close=connection.server.draining,
        )
    except UnsendableResponse as exc:
        log.error("invalid response from the handler: %s", exc)
        return await connection.send_error(500, written=False)
    except Exception as exc:
        log.error("invalid response from the handler: %s: %s", type(exc).__name__, exc)
        return await connection.send_error(500, written=False)
    bodiless = head or status in (204, 304) or 100 <= status < 200
    await connection.send(data)
    if not streaming:
        connection.finished(status, 0 if bodiless else len(body))  # type: ignore[arg-type]  # bytes
    else:
        sent = await _stream_body(connection, body, bodiless)
        connection.finished(status, max(sent, 0))
        if sent < 0:
            return False
    return True


async def _stream_body(connection: HTTPConnection, body: Any, bodiless: bool) -> int:
    """Body bytes sent, or -1 if the body failed (the connection must close)."""
    core = connection.core
    sent = 0
    try:
        if not bodiless:
            async for chunk in body:
                if isinstance(chunk, str):
                    chunk = chunk.encode("utf-8")
                if chunk:
                    sent += len(chunk)
                    await connection.send(core.chunk(chunk))
        end = core.end()
    except ClientDisconnected:
        raise
    except BaseException as exc:
        if not is_app_error(connection.server.backend, exc):
            raise
        # The head is out: the response cannot be turned into a 500 any more.
        # Closing without the final chunk tells the client it is truncated (also
        # when the body is longer or shorter than the handler's Content-Length).
        log.exception("streaming response body raised; closing the connection")
        return -1
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()
    await connection.send(end)
    return sent


__all__ = ["NativeAdapter", "internal_error", "run_native", "send_response"]
