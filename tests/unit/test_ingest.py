"""Reading lead files for `leadsync enqueue`: keys vs attributes, renames, bad rows by line."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.ops.ingest import Row, count_lines, detect_format, parse_mapping, read_rows


def rows(text: str, kind: str = "csv", mapping: dict[str, str] | None = None) -> list[Row]:
    return list(read_rows(text.splitlines(keepends=True), kind, mapping))  # type: ignore[arg-type]


def test_csv_key_columns_become_keys_and_every_other_column_an_attribute() -> None:
    (row,) = rows("email,marketo_id,Company,FirstName\nann@x.com,7,Acme,Ann\n")
    assert row.record == {
        "email": "ann@x.com",
        "marketo_id": "7",
        "attributes": {"Company": "Acme", "FirstName": "Ann"},
    }


def test_a_map_renames_a_column_into_a_key_or_an_attribute() -> None:
    mapping = parse_mapping(["Email Address=email", "Org=Company"])
    (row,) = rows("Email Address,Org\nann@x.com,Acme\n", mapping=mapping)
    assert row.record == {"email": "ann@x.com", "attributes": {"Company": "Acme"}}


def test_empty_csv_cells_are_left_out_rather_than_blanking_a_field() -> None:
    (row,) = rows("email,Company,City\nann@x.com,,Paris\n")
    assert row.record == {"email": "ann@x.com", "attributes": {"City": "Paris"}}


def test_bad_csv_rows_carry_their_physical_line_number_and_the_rest_are_read() -> None:
    text = 'email,dedup,Note\na@x.com,true,"two\nlines"\nb@x.com,maybe,x\nc@x.com,no,x,extra\nd@x.com,0,x\n'
    result = rows(text)
    assert [(r.line, r.error) for r in result if r.error] == [
        (4, "dedup: must be true or false"),
        (5, "row: 4 cells but the header has 3"),
    ]
    assert [r.line for r in result if r.record] == [2, 6]
    assert result[-1].record == {"email": "d@x.com", "dedup": False, "attributes": {"Note": "x"}}


def test_an_error_message_names_the_field_but_never_echoes_the_value() -> None:
    (row,) = rows("email,dedup\nsecret@x.com,secret-value\n")
    assert row.error is not None
    assert "secret" not in row.error


def test_jsonl_keeps_json_types_and_merges_an_attributes_object() -> None:
    text = '{"email": "a@x.com", "Score": 5, "attributes": {"Company": "Acme"}}\n\n[1]\n{bad\n'
    result = rows(text, "jsonl")
    assert result[0].record == {
        "email": "a@x.com",
        "attributes": {"Score": 5, "Company": "Acme"},
    }
    assert [(r.line, r.error) for r in result[1:]] == [
        (3, "row: not a JSON object"),
        (4, "row: not valid JSON"),
    ]


@pytest.mark.parametrize(
    ("name", "explicit", "expected"),
    [
        ("a.csv", None, "csv"),
        ("a.JSONL", None, "jsonl"),
        ("a.ndjson", None, "jsonl"),
        ("a.txt", "csv", "csv"),
    ],
)
def test_the_format_comes_from_the_extension_unless_given(
    name: str, explicit: str | None, expected: str
) -> None:
    assert detect_format(Path(name), explicit) == expected


def test_an_unknown_extension_asks_for_format() -> None:
    with pytest.raises(ValueError, match="--format"):
        detect_format(Path("leads.txt"))


@pytest.mark.parametrize("item", ["email", "=email", "Col="])
def test_a_malformed_map_is_rejected(item: str) -> None:
    with pytest.raises(ValueError, match="COLUMN=FIELD"):
        parse_mapping([item])


def test_count_lines_counts_newlines(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a\nb\nc\n")
    assert count_lines(path) == 3
