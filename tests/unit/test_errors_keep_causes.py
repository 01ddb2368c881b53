"""Errors keep their cause: JSON log lines carry the traceback chain, and a failed HTTP
exchange names the host, the errno and the TLS reason, never a URL query or a body."""

from __future__ import annotations

import json
import logging
import socket
import ssl

import aiohttp
import pytest

from worker.errors import TransportError
from worker.obs.logs import JsonFormatter
from worker.transport import AiohttpTransport


def test_a_json_log_line_keeps_the_traceback_with_its_cause() -> None:
    try:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError as exc:
            raise TransportError("HTTP exchange failed") from exc
    except TransportError:
        record = logging.LogRecord("worker.x", logging.ERROR, __file__, 1, "call failed", (), None)
        import sys

        record.exc_info = sys.exc_info()
    line = json.loads(JsonFormatter().format(record))
    assert line["exc_type"] == "TransportError"
    assert "ConnectionResetError" in line["traceback"]
    assert "direct cause" in line["traceback"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_refused_connection_names_host_and_errno_and_keeps_the_cause() -> None:
    port = _free_port()  # nothing listens there
    transport = AiohttpTransport.create(
        request_timeout_s=5, connect_timeout_s=2, max_response_bytes=1024
    )
    try:
        with pytest.raises(TransportError) as caught:
            await transport.post(
                f"http://127.0.0.1:{port}/soap?token=s3cret", b"<lead>a@x.com</lead>", {}
            )
    finally:
        await transport.close()
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "errno" in message
    assert "s3cret" not in message
    assert "a@x.com" not in message
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)


def test_a_tls_failure_names_the_tls_reason() -> None:
    from worker.transport.aiohttp_transport import describe

    os_error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    os_error.reason = "CERTIFICATE_VERIFY_FAILED"  # type: ignore[attr-defined]
    key = aiohttp.client_reqrep.ConnectionKey(  # type: ignore[attr-defined]
        "marketo.test", 443, True, True, None, None, None
    )
    exc = aiohttp.ClientConnectorCertificateError(key, os_error)
    assert "TLS: CERTIFICATE_VERIFY_FAILED" in describe(exc)
