"""The production transport: aiohttp, explicit timeouts, a reply read to its end under a
running size cap, and errors that say what went wrong on the wire (host, errno, TLS
reason) but never carry a URL's query, a header or a body, where credentials and lead
data travel.

A failure is told apart by whether the request body had started to leave: before that,
Marketo cannot have seen the call (``TransportError``, retried); after it, Marketo may
have applied it (an ``OutcomeUnknown`` branch, never retried in place). aiohttp's
``on_request_chunk_sent`` trace signal marks the moment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from urllib.parse import urlsplit

import aiohttp

from worker.errors import CallTimeout, ProtocolError, ReplyLost, TransportError
from worker.transport.base import HttpReply

#: Bytes taken from the socket buffer per read while a reply is collected.
READ_CHUNK_BYTES = 64 * 1024


@dataclass(slots=True)
class _Exchange:
    """One POST's progress, set by the trace signal."""

    body_started: bool = False
    headers_sent: bool = False


async def _on_headers_sent(
    _session: aiohttp.ClientSession,
    context: SimpleNamespace,
    _params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    exchange = context.trace_request_ctx
    if isinstance(exchange, _Exchange):
        exchange.headers_sent = True


async def _on_chunk_sent(
    _session: aiohttp.ClientSession,
    context: SimpleNamespace,
    _params: aiohttp.TraceRequestChunkSentParams,
) -> None:
    exchange = context.trace_request_ctx
    if isinstance(exchange, _Exchange):
        exchange.body_started = True


def _trace() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(_on_chunk_sent)
    trace.on_request_headers_sent.append(_on_headers_sent)
    return trace


class AiohttpTransport:
    """The production transport: explicit timeouts and a cap on the reply size."""

    def __init__(self, session: aiohttp.ClientSession, *, max_response_bytes: int) -> None:
        self.session = session
        self.max_response_bytes = max_response_bytes

    @classmethod
    def create(
        cls,
        *,
        request_timeout_s: float,
        connect_timeout_s: float,
        max_response_bytes: int,
        max_connections: int = 100,
    ) -> AiohttpTransport:
        """Make the session; call inside the event loop that will use it."""
        timeout = aiohttp.ClientTimeout(
            total=request_timeout_s, sock_connect=connect_timeout_s, sock_read=request_timeout_s
        )
        connector = aiohttp.TCPConnector(limit=max_connections, enable_cleanup_closed=True)
        session = aiohttp.ClientSession(
            timeout=timeout,
            connector=connector,
            raise_for_status=False,
            trace_configs=[_trace()],
        )
        return cls(session, max_response_bytes=max_response_bytes)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpReply:
        return await self._exchange("POST", url, body, headers)

    async def get(self, url: str, headers: Mapping[str, str]) -> HttpReply:
        """A GET has no body: it counts as written once its headers left."""
        return await self._exchange("GET", url, None, headers)

    async def _exchange(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]
    ) -> HttpReply:
        exchange = _Exchange()

        def written() -> bool:
            return exchange.body_started if body is not None else exchange.headers_sent

        try:
            async with self.session.request(
                method, url, data=body, headers=dict(headers), trace_request_ctx=exchange
            ) as response:
                content = await self._read_all(response)
                return HttpReply(
                    response.status,
                    response.headers.get("Content-Type"),
                    content,
                    request_written=written(),
                )
        except TimeoutError as exc:
            if written():
                raise CallTimeout(f"timed out waiting for {_host(url)}") from exc
            raise TransportError(f"timed out connecting to {_host(url)}") from exc
        except aiohttp.ClientError as exc:
            if written():
                raise ReplyLost(
                    f"HTTP exchange with {_host(url)} failed after the request was sent: "
                    f"{describe(exc)}"
                ) from exc
            raise TransportError(
                f"HTTP exchange with {_host(url)} failed: {describe(exc)}"
            ) from exc

    async def _read_all(self, response: aiohttp.ClientResponse) -> bytes:
        """The whole body, read until its end (a reply arrives in as many pieces as TLS
        records and TCP windows cut it into), or ProtocolError past the cap. A body shorter
        than its Content-Length raises aiohttp's ClientPayloadError: never a prefix."""
        cap = self.max_response_bytes
        if response.content_length is not None and response.content_length > cap:
            raise ProtocolError(f"response of {response.content_length} bytes is over {cap}")
        pieces: list[bytes] = []
        size = 0
        async for piece in response.content.iter_chunked(READ_CHUNK_BYTES):
            size += len(piece)
            if size > cap:
                raise ProtocolError(f"response larger than {cap} bytes")
            pieces.append(piece)
        return b"".join(pieces)

    async def close(self) -> None:
        await self.session.close()


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def describe(exc: aiohttp.ClientError) -> str:
    """The cause of a failed exchange, from the fields aiohttp keeps: the class, the
    errno and its text of a connection error, the TLS library's reason, the HTTP status
    of a bad reply. ``str(exc)`` is not used: some carry the request URL."""
    parts = [exc.__class__.__name__]
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if os_error.errno is not None:
            parts.append(f"errno {os_error.errno}")
        if os_error.strerror:
            parts.append(os_error.strerror)
    certificate_error = getattr(exc, "certificate_error", None)
    if certificate_error is not None:
        parts.append(
            f"TLS: {getattr(certificate_error, 'reason', None) or certificate_error.__class__.__name__}"
        )
    elif isinstance(exc, aiohttp.ClientSSLError):
        reason = getattr(exc.os_error, "reason", None)
        parts.append(f"TLS: {reason or exc.os_error.__class__.__name__}")
    if isinstance(exc, aiohttp.ClientResponseError):
        parts.append(f"HTTP {exc.status}")
    return ", ".join(parts)
