"""Request ids of the HTTP API: bound to a key by an HMAC tag; the library reads them."""

from __future__ import annotations

import pytest

from producers.contract import parse_request_id
from worker.api import request_ids


def test_a_tag_binds_an_id_to_one_key() -> None:
    mine, theirs = request_ids.id_secret("lsk_a"), request_ids.id_secret("lsk_b")
    bound = request_ids.bind(mine, "3-1764660000000-0")
    assert bound.startswith("3-1764660000000-0.")
    assert len(request_ids.split(bound)[1] or "") == 2 * request_ids.TAG_BYTES
    assert request_ids.unbind(mine, bound) == "3-1764660000000-0"
    assert request_ids.unbind(theirs, bound) is None
    assert request_ids.unbind(mine, "3-1764660000000-0") is None  # no tag
    assert request_ids.unbind(mine, bound.replace("3-", "2-", 1)) is None  # tag of another id
    assert request_ids.unbind(None, bound) == "3-1764660000000-0"  # read:all
    assert request_ids.unbind(None, "3-1764660000000-0") == "3-1764660000000-0"
    assert request_ids.unbind(mine, "3-1-0.\u00e9\u0000") is None  # not ASCII: no error


def test_the_library_reads_an_api_id_as_its_request() -> None:
    bound = request_ids.bind(request_ids.id_secret("lsk_a"), "3-1764660000000-7")
    assert parse_request_id(bound) == (3, "1764660000000-7")
    for bad in ("3-1-0.", "3-1-0.XYZ", "3-1-0.ab.cd"):
        with pytest.raises(ValueError, match="not a leadsync request id"):
            parse_request_id(bad)
