"""The HTTP seam under the Marketo APIs: a Transport, the aiohttp one, and a mock."""

from worker.transport.aiohttp_transport import AiohttpTransport
from worker.transport.base import HttpReply, Transport
from worker.transport.mock import Handler, MockTransport

__all__ = ["AiohttpTransport", "Handler", "HttpReply", "MockTransport", "Transport"]
