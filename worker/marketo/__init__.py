"""The Marketo API family: the seam the drain talks to (``base``), the SOAP API behind
it (``soap``) and a stub beside it (``stub``)."""

from worker.marketo.base import MarketoApi, SyncResult, SyncStatus
from worker.marketo.soap.api import SoapApi
from worker.marketo.stub import StubApi

__all__ = ["MarketoApi", "SoapApi", "StubApi", "SyncResult", "SyncStatus"]
