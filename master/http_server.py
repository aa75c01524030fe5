"""The HTTP server: Tornado's, except that a message it cannot take is answered in JSON, never by a bare close.

Tornado closes the connection without a word when the request line and headers exceed
``max_header_size``, and answers a bare ``400`` when a body runs past the handler's limit. Clients
of this API get ``{"error": code, "message": ...}`` for those too: 414 when the request line alone
is too long, 431 for the headers, 413 ``body_too_large`` for a body (chunked or declared).
"""

from __future__ import annotations

import json
from typing import Any

from tornado import httputil, iostream
from tornado.http1connection import HTTP1Connection, HTTP1ServerConnection
from tornado.httpserver import HTTPServer, _HTTPRequestContext

# What Tornado raises when a body is longer than the handler's limit (tornado/http1connection.py).
_BODY_TOO_LARGE = ("Content-Length too long", "chunked body too large", "Body too long", "decompressed body too large")


class BodyTooLarge(Exception):
    """A request body ran past the limit its handler set."""


class JsonErrorHTTPServer(HTTPServer):
    def handle_stream(self, stream: iostream.IOStream, address: tuple) -> None:
        context = _HTTPRequestContext(stream, address, self.protocol, self.trusted_downstream)
        conn = _ServerConnection(stream, self.conn_params, context)
        self._connections.add(conn)
        conn.start_serving(self)


class _ServerConnection(HTTP1ServerConnection):
    async def _server_request_loop(self, delegate: httputil.HTTPServerConnectionDelegate) -> None:
        try:
            while True:
                conn = _Connection(self.stream, False, self.params, self.context)
                request_delegate = delegate.start_request(self, conn)
                if not await conn.read_request(request_delegate):
                    return
        finally:
            delegate.on_close(self)


class _Connection(HTTP1Connection):
    async def read_request(self, delegate: httputil.HTTPMessageDelegate) -> bool:
        """One request; False when the connection is to be closed."""
        try:
            return await self.read_response(delegate)
        except iostream.UnsatisfiableReadError:
            await self._answer_and_close(*self._oversized_head())
        except BodyTooLarge:
            if not self._write_finished:
                await self._answer_and_close(413, "body_too_large", "request body exceeds this route's limit")
            else:
                self.close()
        except iostream.StreamClosedError:
            pass
        return False

    def _read_body(self, code: int, headers: httputil.HTTPHeaders, delegate: httputil.HTTPMessageDelegate):
        try:
            reading = super()._read_body(code, headers, delegate)
        except httputil.HTTPInputError as exc:
            raise _body_error(exc) from None
        return None if reading is None else _translated(reading)

    def _oversized_head(self) -> tuple[int, str, str]:
        # The stream's buffer holds what was read of the head: no line end in it means the request line alone
        # was too long (what a client sees as a URL too long).
        head = bytes(self.stream._read_buffer[:self.params.max_header_size])  # noqa: SLF001
        if b"\n" not in head:
            return 414, "uri_too_long", f"the request line exceeds {self.params.max_header_size} bytes"
        return 431, "headers_too_large", f"the request headers exceed {self.params.max_header_size} bytes"

    async def _answer_and_close(self, status: int, code: str, message: str) -> None:
        body = (json.dumps({"error": code, "message": message}) + "\n").encode()
        head = (f"HTTP/1.1 {status} {httputil.responses.get(status, 'Error')}\r\n"
                "Content-Type: application/json; charset=UTF-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1")
        try:
            await self.stream.write(head + body)
        except iostream.StreamClosedError:
            pass
        self.close()


async def _translated(reading: Any) -> None:
    try:
        await reading
    except httputil.HTTPInputError as exc:
        raise _body_error(exc) from None


def _body_error(exc: httputil.HTTPInputError) -> Exception:
    return BodyTooLarge(str(exc)) if str(exc).startswith(_BODY_TOO_LARGE) else exc
