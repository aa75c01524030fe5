"""The HTTP server: Tornado's, except that a message it cannot take is answered in JSON, never by a bare close.

Tornado closes the connection without a word when the request line and headers exceed
``max_header_size``, and answers a bare ``400`` when a body runs past the handler's limit. Clients
of this API get ``{"error": code, "message": ...}`` for those too: 414 when the request line alone
is too long, 431 for the headers, 413 ``body_too_large`` for a body (chunked or declared).

A connection closed while the client is still sending makes the kernel reset it, and a reset can
destroy the answer before the client reads it. So these answers end with a lingering close, as
nginx does: the write side is shut, and what the client still sends is read and dropped for a few
seconds (bounded in time and bytes) before the socket is closed.

A handler that receives a file can have its body (one with a Content-Length) read straight into its
own memory (``receive_body_into``): ``recv_into`` the writer's page-aligned buffers instead of Tornado's
delivery of each piece as a new ``bytes`` to ``data_received``. That takes the Python work per byte off
the upload path (docs/architecture.md, "Receiving a file").
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any, Protocol

from tornado import httputil, iostream
from tornado.http1connection import HTTP1Connection, HTTP1ServerConnection
from tornado.httpserver import HTTPServer, _HTTPRequestContext
from tornado.log import gen_log

# What Tornado raises when a body is longer than the handler's limit (tornado/http1connection.py).
_BODY_TOO_LARGE = ("Content-Length too long", "chunked body too large", "Body too long", "decompressed body too large")
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 << 20
YIELD_EVERY = 1 << 20  # a body read straight into memory lets other requests run after this many bytes


class BodyReceiver(Protocol):
    """Where a handler wants its request body: straight into memory it lends, a view at a time."""

    async def body_space(self) -> memoryview:
        """Memory to receive the next bytes into (a scratch buffer for bytes to be dropped)."""

    def body_received(self, count: int) -> None:
        """``count`` bytes arrived at the start of the last view."""


class RefusedMessage(Exception):
    """A request Tornado cannot take (malformed head or body): answered 400 ``malformed_request``."""

    status, code = 400, "malformed_request"


class BodyTooLarge(RefusedMessage):
    """A request body ran past the limit its handler set."""

    status, code = 413, "body_too_large"


class JsonErrorHTTPServer(HTTPServer):
    def _handle_connection(self, connection: socket.socket, address: Any) -> None:
        if self.ssl_options is not None:  # TLS is terminated in front of the master (HAProxy, nginx)
            super()._handle_connection(connection, address)
            return
        stream = _AnsweringStream(connection, max_buffer_size=self.max_buffer_size,
                                  read_chunk_size=self.read_chunk_size)
        self.handle_stream(stream, address)

    def handle_stream(self, stream: iostream.IOStream, address: tuple) -> None:
        context = _HTTPRequestContext(stream, address, self.protocol, self.trusted_downstream)
        conn = _ServerConnection(stream, self.conn_params, context)
        self._connections.add(conn)
        conn.start_serving(self)


class _AnsweringStream(iostream.IOStream):
    """An IOStream that can send a last JSON answer and close without resetting the connection."""

    max_head: int = 65536  # set by the connection from the server's max_header_size

    def close(self, exc_info: Any = False) -> None:
        # IOStream closes itself when the head outgrows max_header_size; answer before the socket goes.
        if isinstance(exc_info, iostream.UnsatisfiableReadError) and not self.closed():
            self.answer_and_linger(*self._oversized_head(), written_by_stream=False)
        super().close(exc_info)

    def answer_and_linger(self, status: int, code: str, message: str, *, written_by_stream: bool = True) -> None:
        body = (json.dumps({"error": code, "message": message}) + "\n").encode()
        head = (f"HTTP/1.1 {status} {httputil.responses.get(status, 'Error')}\r\n"
                "Content-Type: application/json; charset=UTF-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1")
        try:
            self.socket.send(head + body)  # a few hundred bytes: the socket's send buffer takes them at once
        except OSError:
            pass
        self.linger()

    def linger(self) -> None:
        """Shut the write side; a copy of the socket reads and drops what the client still sends, then closes."""
        try:
            self.socket.shutdown(socket.SHUT_WR)
            drain = self.socket.dup()
        except OSError:
            return
        task = asyncio.ensure_future(_drain_and_close(drain))
        _LINGERING.add(task)
        task.add_done_callback(_LINGERING.discard)

    def _oversized_head(self) -> tuple[int, str, str]:
        head = bytes(self._read_buffer[:self.max_head])
        if b"\n" not in head:
            return 414, "uri_too_long", f"the request line exceeds {self.max_head} bytes"
        return 431, "headers_too_large", f"the request headers exceed {self.max_head} bytes"


_LINGERING: set[asyncio.Task] = set()  # keeps the drain tasks referenced until they end


async def _drain_and_close(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LINGER_SECONDS
    drained = 0
    sock.setblocking(False)
    try:
        while drained < LINGER_BYTES and (remaining := deadline - loop.time()) > 0:
            data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), remaining)
            if not data:
                break
            drained += len(data)
    except (asyncio.TimeoutError, OSError):
        pass
    finally:
        sock.close()


class _ServerConnection(HTTP1ServerConnection):
    async def _server_request_loop(self, delegate: httputil.HTTPServerConnectionDelegate) -> None:
        if isinstance(self.stream, _AnsweringStream):
            self.stream.max_head = self.params.max_header_size
        try:
            while True:
                conn = _Connection(self.stream, False, self.params, self.context)
                request_delegate = delegate.start_request(self, conn)
                if not await conn.read_request(request_delegate):
                    return
                await asyncio.sleep(0)
        finally:
            delegate.on_close(self)


class _Connection(HTTP1Connection):
    body_receiver: BodyReceiver | None = None

    def receive_body_into(self, receiver: BodyReceiver) -> None:
        """Have this request's body, if it has a Content-Length, received into ``receiver``'s memory rather than
        passed to ``data_received`` (a chunked body still comes that way)."""
        self.body_receiver = receiver

    async def _read_fixed_body(self, content_length: int, delegate: httputil.HTTPMessageDelegate) -> None:
        receiver = self.body_receiver
        if receiver is None:
            await super()._read_fixed_body(content_length, delegate)
            return
        since_yield = 0
        while content_length > 0:
            with await receiver.body_space() as space, space[:content_length] as view:
                # partial: what one recv brings is reported at once (a cut loses nothing, progress is visible)
                count = await self.stream.read_into(view, partial=True)
            receiver.body_received(count)
            content_length -= count
            since_yield += count
            if since_yield >= YIELD_EVERY:  # as Tornado does: a fast sender must not starve other requests
                since_yield = 0
                await asyncio.sleep(0)

    async def read_request(self, delegate: httputil.HTTPMessageDelegate) -> bool:
        """One request; False when the connection is to be closed."""
        try:
            return await self.read_response(delegate)
        except RefusedMessage as refused:
            self._refuse(refused)
        except (iostream.StreamClosedError, iostream.UnsatisfiableReadError, asyncio.CancelledError):
            pass
        except Exception:  # noqa: BLE001 - as Tornado's own loop does: log it and drop the connection
            gen_log.error("Uncaught exception", exc_info=True)
            self.close()
        return False

    def _refuse(self, refused: RefusedMessage) -> None:
        stream = self.stream
        if isinstance(stream, _AnsweringStream) and not stream.closed():
            if self._write_finished:  # the handler answered already (a 401, say): just do not reset
                stream.linger()
            else:
                stream.answer_and_linger(refused.status, refused.code, str(refused))
        self.close()

    def _parse_headers(self, data: bytes):
        try:
            start_line, headers = super()._parse_headers(data)
            httputil.parse_request_start_line(start_line)  # Tornado checks it next, answering a bare 400
        except httputil.HTTPInputError as exc:
            raise RefusedMessage(f"malformed request head: {exc}") from None
        return start_line, headers

    def _read_body(self, code: int, headers: httputil.HTTPHeaders, delegate: httputil.HTTPMessageDelegate):
        try:
            reading = super()._read_body(code, headers, delegate)
        except httputil.HTTPInputError as exc:
            raise _body_error(exc) from None
        return None if reading is None else _translated(reading)


async def _translated(reading: Any) -> None:
    try:
        await reading
    except httputil.HTTPInputError as exc:
        raise _body_error(exc) from None


def _body_error(exc: httputil.HTTPInputError) -> RefusedMessage:
    if str(exc).startswith(_BODY_TOO_LARGE):
        return BodyTooLarge("request body exceeds this route's limit")
    return RefusedMessage(f"malformed request body: {exc}")
