"""The instance's lead fields, read from Marketo's describe over the deployment's
protocol (SOAP ``describeMObject``, REST ``describe2.json``), with both spellings of each
name (``worker.core.fields``) for producers to check attributes against."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from worker.core.fields import rest_name, soap_name
from worker.marketo.base import MarketoApi
from worker.marketo.rest import describe as rest_describe
from worker.marketo.rest.api import RestApi
from worker.marketo.soap import describe as soap_describe
from worker.marketo.soap.api import SoapApi
from worker.settings import Settings

SOAP_SOURCE: Final = "SOAP describeMObject"
REST_SOURCE: Final = "REST describe2.json"
#: More names than any Marketo lead schema has (a bound on what is stored and read).
MAX_FIELDS: Final = 20_000
#: Longest field name kept (Marketo's API names are far shorter).
MAX_NAME_CHARS: Final = 255


@dataclass(frozen=True, slots=True)
class LeadFieldNames:
    """The lead fields Marketo listed (as it spells them) and which call listed them."""

    names: tuple[str, ...]
    source: str

    def spellings(self) -> dict[str, str]:
        """Every case-folded spelling (the name, its SOAP and its REST form) -> the name."""
        spelled: dict[str, str] = {}
        for name in self.names:
            for form in (name, soap_name(name), rest_name(name)):
                spelled.setdefault(form.casefold(), name)
        return spelled


def usable(names: tuple[str, ...], source: str) -> LeadFieldNames:
    """The names without duplicates, blanks or absurd lengths, at most MAX_FIELDS."""
    kept = dict.fromkeys(n for n in names if 0 < len(n) <= MAX_NAME_CHARS)
    return LeadFieldNames(tuple(kept)[:MAX_FIELDS], source)


#: One describe call: the instance's lead fields, or a MarketoError.
Describe = Callable[[], Awaitable[LeadFieldNames]]


def describer_for(api: MarketoApi, settings: Settings) -> Describe | None:
    """The describe call of the protocol ``api`` speaks, on its transport (REST: with its
    shared token), to the endpoint and with the credentials of ``settings`` (those ``api``
    was made from); None for an API with no describe (the stub of tests)."""
    if isinstance(api, RestApi):
        rest = api

        async def describe_rest() -> LeadFieldNames:
            names = await rest_describe.describe_lead_fields(
                rest.transport, rest.tokens, rest_url=settings.marketo_rest_url
            )
            return usable(names, REST_SOURCE)

        return describe_rest
    if isinstance(api, SoapApi):
        soap = api

        async def describe_soap() -> LeadFieldNames:
            names = await soap_describe.describe_lead_fields(
                soap.transport,
                endpoint=settings.marketo_endpoint,
                user_id=settings.marketo_user_id,
                encryption_key=settings.marketo_encryption_key,
                max_response_bytes=settings.max_response_bytes,
            )
            return usable(names, SOAP_SOURCE)

        return describe_soap
    return None
