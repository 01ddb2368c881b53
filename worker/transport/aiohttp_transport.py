"""The production transport: aiohttp, explicit timeouts, a cap on the reply size, and
errors that say what went wrong on the wire (host, errno, TLS reason) but never carry
a URL's query, a header or a body, where credentials and lead data travel."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

import aiohttp

from worker.errors import CallTimeout, ProtocolError, TransportError
from worker.transport.base import HttpReply


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
            timeout=timeout, connector=connector, raise_for_status=False
        )
        return cls(session, max_response_bytes=max_response_bytes)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpReply:
        try:
            async with self.session.post(url, data=body, headers=dict(headers)) as response:
                content = await response.content.read(self.max_response_bytes + 1)
                if len(content) > self.max_response_bytes:
                    raise ProtocolError(f"response larger than {self.max_response_bytes} bytes")
                return HttpReply(response.status, response.headers.get("Content-Type"), content)
        except TimeoutError as exc:
            raise CallTimeout(f"timed out waiting for {_host(url)}") from exc
        except aiohttp.ClientError as exc:
            raise TransportError(
                f"HTTP exchange with {_host(url)} failed: {describe(exc)}"
            ) from exc

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
