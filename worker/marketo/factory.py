"""The MarketoApi a deployment talks to, from LEADSYNC_MARKETO_API."""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio

from worker.marketo.base import MarketoApi
from worker.marketo.rest.api import RestApi
from worker.marketo.rest.codec import RestOptions
from worker.marketo.rest.tokens import TokenSource
from worker.marketo.soap.api import SoapApi
from worker.settings import Settings
from worker.transport import Transport


def api_for(
    settings: Settings,
    transport: Transport,
    redis_client: redis.asyncio.Redis,
    *,
    on_token_fetch: Callable[[], None] = lambda: None,
) -> MarketoApi:
    """SoapApi or RestApi, configured from ``settings``."""
    if settings.marketo_api == "rest":
        tokens = TokenSource(
            redis_client,
            transport,
            identity_url=settings.rest_identity_url,
            client_id=settings.marketo_client_id,
            client_secret=settings.marketo_client_secret,
            key_prefix=settings.key_prefix,
            on_fetch=on_token_fetch,
        )
        options = RestOptions(
            action=settings.marketo_action,
            lookup_field=settings.marketo_lookup_field,
            partition=settings.marketo_partition,
        )
        return RestApi(transport, tokens, rest_url=settings.marketo_rest_url, options=options)
    return SoapApi(
        transport,
        endpoint=settings.marketo_endpoint,
        user_id=settings.marketo_user_id,
        encryption_key=settings.marketo_encryption_key,
        max_response_bytes=settings.max_response_bytes,
    )
