"""Reading lead files for ``leadsync enqueue``: CSV (with a header) or JSON Lines.

Columns named like a lead key field (email, marketo_id, foreign_sys_person_id,
foreign_sys_type, dedup) are keys; every other column is a Marketo attribute.
``--map COL=FIELD`` renames a column first. A row that cannot be read becomes a
:class:`Row` with an error naming the field (never its value) and its line number,
so one bad row never stops the rest.

CSV cells are text and an empty cell is left out (it never blanks a Marketo field);
JSONL values keep their JSON type, and an ``attributes`` object is merged with the
other non-key fields.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

FileFormat = Literal["csv", "jsonl"]

KEY_FIELDS = frozenset({"email", "marketo_id", "foreign_sys_person_id", "foreign_sys_type"})
_TRUE = frozenset({"true", "1", "yes", "y"})
_FALSE = frozenset({"false", "0", "no", "n"})


@dataclass(frozen=True, slots=True)
class Row:
    """One input record: the ``upsert_many`` record, or why it was skipped."""

    line: int
    record: dict[str, Any] | None = None
    error: str | None = None


def parse_mapping(items: Iterable[str]) -> dict[str, str]:
    """``["Email Address=email", ...]`` -> ``{"Email Address": "email"}``."""
    mapping: dict[str, str] = {}
    for item in items:
        column, sep, target = item.partition("=")
        if not sep or not column.strip() or not target.strip():
            raise ValueError(f"--map needs COLUMN=FIELD, got {item!r}")
        mapping[column.strip()] = target.strip()
    return mapping


def detect_format(path: Path, explicit: str | None = None) -> FileFormat:
    name = (explicit or path.suffix.lstrip(".")).lower()
    if name == "csv":
        return "csv"
    if name in ("jsonl", "ndjson", "json"):
        return "jsonl"
    raise ValueError(f"cannot tell the format of {path.name}: use --format csv or --format jsonl")


def _dedup(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("dedup: must be true or false")


def to_record(fields: Mapping[str, object], mapping: Mapping[str, str]) -> dict[str, Any]:
    """Split one row into lead key fields and attributes; raise ValueError naming a field."""
    record: dict[str, Any] = {}
    attributes: dict[str, object] = {}
    for column, value in fields.items():
        name = mapping.get(column, column)
        if name == "attributes" and isinstance(value, Mapping):
            attributes.update(value)
        elif name == "dedup":
            record["dedup"] = _dedup(value)
        elif name in KEY_FIELDS:
            record[name] = value
        else:
            attributes[name] = value
    if attributes:
        record["attributes"] = attributes
    return record


def _csv_rows(lines: Iterable[str], mapping: Mapping[str, str]) -> Iterator[Row]:
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        return
    header = [column.strip() for column in header]
    start = reader.line_num + 1
    for cells in reader:
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) > len(header):
            yield Row(line, error=f"row: {len(cells)} cells but the header has {len(header)}")
            continue
        fields = {c: v for c, v in zip(header, cells, strict=False) if v.strip()}
        try:
            yield Row(line, to_record(fields, mapping))
        except ValueError as exc:
            yield Row(line, error=str(exc))


def _jsonl_rows(lines: Iterable[str], mapping: Mapping[str, str]) -> Iterator[Row]:
    for line, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except ValueError:
            yield Row(line, error="row: not valid JSON")
            continue
        if not isinstance(data, dict):
            yield Row(line, error="row: not a JSON object")
            continue
        try:
            yield Row(line, to_record(data, mapping))
        except ValueError as exc:
            yield Row(line, error=str(exc))


def read_rows(
    lines: Iterable[str], file_format: FileFormat, mapping: Mapping[str, str] | None = None
) -> Iterator[Row]:
    """Rows of an open file (or any iterable of lines), in order."""
    mapping = mapping or {}
    if file_format == "csv":
        return _csv_rows(lines, mapping)
    return _jsonl_rows(lines, mapping)


def count_lines(path: Path) -> int:
    """Lines in a file, for a progress bar's total (cheap: reads bytes)."""
    with path.open("rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
