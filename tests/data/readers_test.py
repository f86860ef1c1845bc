"""Readers: every file format, origins, and each kind of bad row (error names file and row;
skip counts it and writes it to skipped_rows.jsonl)."""

from __future__ import annotations

import json
import re

import pytest

from jaxtune.data import readers
from jaxtune.data.readers import BadRows, DataError

ROWS = [{"text": "good film", "label": "pos"}, {"text": "bad, \"awful\" film", "label": "neg"}]


def _write(path, data: bytes | str):
  path.write_bytes(data if isinstance(data, bytes) else data.encode())
  return path


def _fields(rows):
  return [r.fields for r in rows]


def test_jsonl_rows_and_line_numbers(tmp_path):
  p = _write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in ROWS[:1]) + "\n\n" + json.dumps(ROWS[1]) + "\r\n")
  rows = readers.read(str(p), BadRows())
  assert _fields(rows) == ROWS
  assert [(r.file, r.row) for r in rows] == [(str(p), 1), (str(p), 3)]  # blank line 2 is no row


def test_json_list(tmp_path):
  p = _write(tmp_path / "d.json", json.dumps(ROWS))
  rows = readers.read(str(p), BadRows())
  assert _fields(rows) == ROWS and [r.row for r in rows] == [1, 2]


def test_csv_with_quotes_bom_and_multiline_field(tmp_path):
  text = '\ufefftext,label\n"good film",pos\n"bad, ""awful"" film",neg\n"two\nlines",pos\n'
  rows = readers.read(str(_write(tmp_path / "d.csv", text)), BadRows())
  assert _fields(rows)[:2] == ROWS
  assert rows[2].fields["text"] == "two\nlines"
  assert [r.row for r in rows] == [2, 3, 4]  # file lines; the header is line 1


def test_tsv(tmp_path):
  p = _write(tmp_path / "d.tsv", "text\tlabel\r\ngood film\tpos\r\n")
  assert _fields(readers.read(str(p), BadRows())) == ROWS[:1]


def test_parquet(tmp_path):
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq

  p = tmp_path / "d.parquet"
  pq.write_table(pa.Table.from_pylist(ROWS), p)
  rows = readers.read(str(p), BadRows())
  assert _fields(rows) == ROWS and [r.row for r in rows] == [1, 2]


def test_txt_one_example_per_line(tmp_path):
  p = _write(tmp_path / "d.txt", "first line\r\n\nsecond line\n")
  rows = readers.read(str(p), BadRows(), text_key="sentence")
  assert _fields(rows) == [{"sentence": "first line"}, {"sentence": "second line"}]
  assert [r.row for r in rows] == [1, 3]


def test_missing_file_and_unknown_type(tmp_path):
  with pytest.raises(DataError, match="no such file"):
    readers.read(str(tmp_path / "nope.jsonl"), BadRows())
  with pytest.raises(DataError, match="unsupported file type"):
    readers.read_file(_write(tmp_path / "d.xml", "<a/>"), BadRows())


def test_hub_source_goes_through_datasets(monkeypatch):
  import datasets

  calls = []

  def fake_load(name, split):
    calls.append((name, split))
    return [{"text": "hello", "label": 1}]

  monkeypatch.setattr(datasets, "load_dataset", fake_load)
  rows = readers.read("someone/sentiment:validation", BadRows())
  assert calls == [("someone/sentiment", "validation")]
  assert rows[0].fields == {"text": "hello", "label": 1} and rows[0].file == "hub:someone/sentiment:validation"


def test_hub_failure_says_what_was_tried(monkeypatch):
  import datasets

  def offline(name, split):
    raise ConnectionError("no internet")

  monkeypatch.setattr(datasets, "load_dataset", offline)
  with pytest.raises(DataError, match="not a local file.*builtin.*no internet"):
    readers.read("someone/sentiment", BadRows())


# Each bad-row kind a reader detects: (file name, content, expected row, reason pattern).
BAD = {
  "jsonl_unparseable": ("d.jsonl", b'{"text": "ok", "label": "pos"}\n{"text": oops\n', 2, "unparseable JSON"),
  "jsonl_not_object": ("d.jsonl", b'{"text": "ok", "label": "pos"}\n[1, 2]\n', 2, "expected a JSON object"),
  "jsonl_bad_utf8": ("d.jsonl", b'{"text": "ok", "label": "pos"}\n{"text": "caf\xe9", "label": "pos"}\n', 2, "invalid UTF-8"),
  "json_bad_utf8": ("d.json", b'[{"text": "ok", "label": "pos"}, {"text": "caf\xe9", "label": "pos"}]', 2, "invalid UTF-8"),
  "json_not_object": ("d.json", b'[{"text": "ok", "label": "pos"}, "just text"]', 2, "expected a JSON object"),
  "csv_bad_utf8": ("d.csv", b"text,label\nok,pos\ncaf\xe9,pos\n", 3, "invalid UTF-8"),
  "csv_field_count": ("d.csv", b"text,label\nok,pos\nok,pos,extra\n", 3, "3 fields, the header has 2"),
  "tsv_field_count": ("d.tsv", b"text\tlabel\nok\tpos\nmissing tab\n", 3, "1 fields, the header has 2"),
  "txt_bad_utf8": ("d.txt", b"ok\n\xff\xfe bad\n", 2, "invalid UTF-8"),
  # A quote never closed would swallow the rest of the file into one field; the rows after it
  # are read on their own.
  "csv_unclosed_quote": ("d.csv", b'text,label\n"never closed,pos\nok,pos\n', 2,
                         r"unbalanced quote.*never closed.*lines 2-3"),
  "tsv_unclosed_quote": ("d.tsv", b'text\tlabel\n"never closed\tpos\nok\tpos\n', 2, "unbalanced quote"),
  # A quote closed mid-field: csv's lax mode silently dropped the quotes.
  "csv_quote_mid_field": ("d.csv", b'text,label\n"he said "hi" there,pos\nok,pos\n', 2,
                          "unbalanced quote: ',' expected after"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_row_errors_name_file_and_row(tmp_path, case):
  name, content, row, reason = BAD[case]
  p = _write(tmp_path / name, content)
  with pytest.raises(DataError, match=rf"{p.name}, row {row}: .*{reason}"):
    readers.read(str(p), BadRows("error"))


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_row_skip_is_counted_and_written(tmp_path, case):
  name, content, row, reason = BAD[case]
  p = _write(tmp_path / name, content)
  bad = BadRows("skip")
  rows = readers.read(str(p), bad)
  assert len(rows) == 1 and rows[0].fields["text"] == "ok"
  assert len(bad) == 1
  out = bad.write(tmp_path / "work")
  lines = [json.loads(x) for x in out.read_text().splitlines()]
  assert len(lines) == 1
  assert lines[0]["file"] == str(p) and lines[0]["row"] == row
  assert re.search(reason, lines[0]["reason"])
  assert lines[0]["content"]  # the raw row, to find and fix it


def test_skipped_content_is_truncated(tmp_path):
  bad = BadRows("skip")
  bad("f.jsonl", 7, "unparseable JSON line: x", "y" * 5000)
  out = bad.write(tmp_path)
  row = json.loads(out.read_text())
  assert row["row"] == 7 and len(row["content"]) < 600 and row["content"].endswith("...")


def test_unparseable_json_file_is_an_error_even_with_skip(tmp_path):
  p = _write(tmp_path / "d.json", '[{"text": "a"},')
  with pytest.raises(DataError, match=r"d\.json: unparseable JSON.*line 1"):
    readers.read(str(p), BadRows("skip"))


def test_stray_quote_costs_its_own_row_not_the_rows_it_swallowed(tmp_path):
  # Row 2's quote runs on until row 4's opening quote: reported at row 2 (lines 2-4), and rows
  # 3 and 4 are read again on their own rather than merged into it.
  p = _write(tmp_path / "d.csv", 'text,label\n"stray,pos\nmiddle,neg\n"quoted",pos\nend,neg\n')
  with pytest.raises(DataError, match=r"d\.csv, row 2: unbalanced quote.*runs on to line 4.*lines 2-4"):
    readers.read(str(p), BadRows("error"))
  bad = BadRows("skip")
  rows = readers.read(str(p), bad)
  assert [(r.row, r.fields["text"]) for r in rows] == [(3, "middle"), (4, "quoted"), (5, "end")]
  assert [b["row"] for b in bad.skipped] == [2]
  assert bad.skipped[0]["content"].startswith('"stray,pos\nmiddle,neg\n')


def test_quoted_line_breaks_and_crlf_still_read(tmp_path):
  p = _write(tmp_path / "d.csv", b'text,label\r\n"two\r\nlines",pos\r\n"x, ""y""",neg\r\nlast,pos')
  rows = readers.read(str(p), BadRows("error"))
  assert [(r.row, r.fields["text"]) for r in rows] == [(2, "two\r\nlines"), (4, 'x, "y"'), (5, "last")]
