"""The wire form of a ledger entry: its JSON payload, the one-step enqueue script, stream
entry ids (and their one ordering rule) and request ids. Pure Python with no I/O."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Final

from producers.errors import InvalidLead
from producers.lead import LeadUpsert, validate_lead


def text(value: bytes | str) -> str:
    """A Redis reply as text: redis-py returns bytes unless the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else value


def _script(name: str) -> str:
    """A script of ``scripts/`` without its comment lines: EVAL sends the body with every
    upsert, so the comments stay in the file."""
    body = resources.files("producers").joinpath("scripts", name).read_text(encoding="utf-8")
    return "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--"))


_PRELUDE: Final = "".join(
    _script(name) + "\n" for name in ("fence.lua", "admit.lua", "next_id.lua")
)
#: One atomic step per upsert (``scripts/enqueue.lua``): append the entry.
ENQUEUE_LUA: Final = _PRELUDE + _script("enqueue.lua")
#: Every record of an API batch in one atomic step (``scripts/enqueue_batch.lua``).
ENQUEUE_BATCH_LUA: Final = _PRELUDE + _script("enqueue_batch.lua")

# One encoder for every entry: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode_lead(lead: LeadUpsert) -> str:
    """The compact JSON payload stored in a ledger entry."""
    payload: dict[str, Any] = {}
    if lead.email is not None:
        payload["e"] = lead.email
    if lead.marketo_id is not None:
        payload["i"] = lead.marketo_id
    if lead.foreign_sys_person_id is not None:
        payload["f"] = lead.foreign_sys_person_id
        payload["t"] = lead.foreign_sys_type
    if lead.attributes:
        payload["a"] = dict(lead.attributes)
    if not lead.dedup:
        payload["d"] = 0
    return _ENCODER.encode(payload)


def decode_lead(payload: str | bytes) -> LeadUpsert:
    """Parse and re-validate a ledger payload (it may have been written by another version)."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidLead("payload", f"is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise InvalidLead("payload", "is not a JSON object")
    return validate_lead(
        email=data.get("e"),
        marketo_id=data.get("i"),
        foreign_sys_person_id=data.get("f"),
        foreign_sys_type=data.get("t"),
        attributes=data.get("a"),
        dedup=bool(data.get("d", 1)),
    )


# --- request ids ------------------------------------------------------------------------


def request_id(shard: int, entry_id: str) -> str:
    """A request id names the shard and the stream entry: ``"<shard>-<ms>-<seq>"``."""
    return f"{shard}-{entry_id}"


def parse_request_id(value: str) -> tuple[int, str]:
    """Split a request id into (shard, entry id); raise ValueError when malformed. An id
    of the HTTP API (``<shard>-<ms>-<seq>.<tag>``, the tag binding it to an API key) is
    the same request: the library, with Redis's own access, reads it without the tag."""
    plain, dot, tag = value.partition(".")
    if dot and not (tag and all(c in "0123456789abcdef" for c in tag)):
        raise ValueError(f"not a leadsync request id: {value!r}")
    shard_text, _, entry_id = plain.partition("-")
    ms, _, seq = entry_id.partition("-")
    if not (shard_text.isdigit() and ms.isdigit() and seq.isdigit()):
        raise ValueError(f"not a leadsync request id: {value!r}")
    return int(shard_text), entry_id


# --- stream entry ids ---------------------------------------------------------------


def entry_order(entry_id: str) -> tuple[int, int]:
    """Stream ids sort as (milliseconds, sequence), not as strings. The one ordering of
    entries in Python; ``worker/ledger.lua`` has the same rule (``older``)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def entry_time_s(entry_id: str) -> float:
    """The enqueue time of a stream entry, from the milliseconds in its id."""
    return int(entry_id.partition("-")[0]) / 1000.0
