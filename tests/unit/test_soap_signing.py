"""Request signing: the documented test vector, the W3C timestamp form, fresh headers."""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from worker.marketo.soap.signing import AuthHeader, make_auth_header, sign, w3c_timestamp

SEED_USER = "demo17_1_809934544BFABAE58E5D27"
SEED_KEY = "27272727aa"
SEED_TIMESTAMP = "2013-08-01T18:22:30-07:00"
SEED_SIGNATURE = "b5e21953ae9f1b263e644da5eccce9ff33802513"
PACIFIC_DAYLIGHT = timezone(timedelta(hours=-7))
W3C_FORM = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")


def test_the_seed_sample_signature_is_reproduced() -> None:
    assert sign(SEED_TIMESTAMP, SEED_USER, SEED_KEY) == SEED_SIGNATURE


def test_signature_is_lowercase_hex_hmac_sha1_of_timestamp_then_user() -> None:
    expected = hmac.new(b"k", b"2020-01-01T00:00:00+00:00user", hashlib.sha1).hexdigest()
    signature = sign("2020-01-01T00:00:00+00:00", "user", "k")
    assert signature == expected
    assert re.fullmatch(r"[0-9a-f]{40}", signature)


def test_seed_moment_formats_as_the_seed_timestamp() -> None:
    moment = datetime(2013, 8, 1, 18, 22, 30, 987654, tzinfo=PACIFIC_DAYLIGHT)
    assert w3c_timestamp(moment) == SEED_TIMESTAMP


@pytest.mark.parametrize(
    ("offset", "suffix"),
    [
        (timedelta(0), "+00:00"),
        (timedelta(hours=5, minutes=30), "+05:30"),
        (timedelta(hours=-3, minutes=-30), "-03:30"),
        (timedelta(hours=14), "+14:00"),
    ],
)
def test_offsets_are_numeric_with_a_colon_and_never_z(offset: timedelta, suffix: str) -> None:
    stamp = w3c_timestamp(datetime(2024, 2, 29, 23, 59, 59, tzinfo=timezone(offset)))
    assert stamp == f"2024-02-29T23:59:59{suffix}"
    assert "Z" not in stamp


def test_offsets_with_seconds_are_expressed_in_utc() -> None:
    odd = timezone(timedelta(minutes=9, seconds=21))  # Paris local mean time
    assert w3c_timestamp(datetime(1900, 1, 1, 0, 9, 21, tzinfo=odd)) == "1900-01-01T00:00:00+00:00"


def test_naive_and_missing_times_become_aware_local_time() -> None:
    naive = datetime(2021, 6, 1, 12, 0, 0)
    stamp = w3c_timestamp(naive)
    assert stamp.startswith("2021-06-01T12:00:00")
    assert W3C_FORM.match(stamp)
    assert W3C_FORM.match(w3c_timestamp())


def test_auth_header_signs_its_own_timestamp() -> None:
    moment = datetime(2013, 8, 1, 18, 22, 30, tzinfo=PACIFIC_DAYLIGHT)
    header = make_auth_header(SEED_USER, SEED_KEY, moment)
    assert header == AuthHeader(
        user_id=SEED_USER, signature=SEED_SIGNATURE, timestamp=SEED_TIMESTAMP
    )


def test_each_attempt_gets_a_fresh_timestamp_and_signature_when_time_moves() -> None:
    start = datetime(2024, 1, 1, 9, 0, 0, tzinfo=UTC)
    first = make_auth_header("user", "key", start)
    retry = make_auth_header("user", "key", start + timedelta(seconds=1))
    assert first.timestamp != retry.timestamp
    assert first.signature != retry.signature
    assert retry.signature == sign(retry.timestamp, "user", "key")


def test_auth_header_repr_leaves_out_the_replayable_signature() -> None:
    header = make_auth_header("user", "key", datetime(2024, 1, 1, tzinfo=UTC))
    assert header.signature not in repr(header)
    assert "user" in repr(header)
