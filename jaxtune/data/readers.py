"""Rows from local files, builtin data sets and the `datasets` hub, each with its origin.

A row is a dict of columns plus the file and 1-based row (line, or item for JSON/parquet) it
came from, so every later error can point at it. Files are read as bytes and decoded here, so
one row of invalid UTF-8 is one bad row, not a failed file. A bad row (unparseable line,
invalid UTF-8, missing column, unknown label, empty text, ...) goes to `BadRows`: with
on_bad_row='error' it raises a `DataError` naming the file, row and reason; with 'skip' it is
counted and later written to workdir/skipped_rows.jsonl.

Formats: .jsonl (one object per line), .json (a list of objects), .csv / .tsv (header row,
standard csv quoting; a quote never closed, or closed mid-field, is a bad row at its line),
.parquet, .txt (one example per line, in the `text_key` column). Blank lines in .jsonl and .txt
separate nothing and are not rows.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from jaxtune.data.rows import BadRows, Row, reason_kind  # noqa: F401 (readers.BadRows, ...)
from jaxtune.errors import DataError

log = logging.getLogger(__name__)

FILE_FORMATS = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")
def read(source: str, bad: BadRows, *, text_key: str = "text") -> list[Row]:
  """All rows of a local file, a builtin data set, or a hub data set ('name' or 'name:split')."""
  from jaxtune.data import builtin

  path = Path(source).expanduser()
  if path.is_file():
    return read_file(path, bad, text_key=text_key)
  if path.suffix.lower() in FILE_FORMATS:
    raise DataError(f"{source}: no such file")
  if source in builtin.NAMES:
    return builtin.read(source, bad)
  return read_hub(source)


def read_file(path: str | Path, bad: BadRows, *, text_key: str = "text") -> list[Row]:
  path = Path(path)
  ext = path.suffix.lower()
  readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_delimited,
             ".tsv": _read_delimited, ".parquet": _read_parquet, ".txt": _read_txt}
  if ext not in readers:
    raise DataError(f"{path}: unsupported file type {ext!r} (known: {', '.join(FILE_FORMATS)})")
  if ext == ".txt":
    return _read_txt(path, bad, text_key)
  return readers[ext](path, bad)


def _lines(path: Path):
  """(1-based line number, raw bytes without the line end) of each line; a BOM is dropped."""
  data = path.read_bytes()
  if data.startswith(b"\xef\xbb\xbf"):
    data = data[3:]
  for i, line in enumerate(data.split(b"\n"), 1):
    yield i, line.removesuffix(b"\r")


def _decode(raw: bytes, path: Path, line: int, bad: BadRows) -> str | None:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    bad(str(path), line, f"invalid UTF-8 at byte {e.start} of the line", raw)
    return None


def _read_jsonl(path: Path, bad: BadRows) -> list[Row]:
  rows = []
  for i, raw in _lines(path):
    if not raw.strip():
      continue
    text = _decode(raw, path, i, bad)
    if text is None:
      continue
    try:
      obj = json.loads(text)
    except json.JSONDecodeError as e:
      bad(str(path), i, f"unparseable JSON line: {e.msg} at column {e.colno}", raw)
      continue
    if not isinstance(obj, dict):
      bad(str(path), i, f"unparseable row: expected a JSON object, got {type(obj).__name__}", raw)
      continue
    rows.append(Row(obj, str(path), i))
  return rows


def _has_bad_utf8(value) -> bool:
  """Whether a value decoded with surrogateescape holds undecodable bytes."""
  if isinstance(value, str):
    try:
      value.encode("utf-8")
      return False
    except UnicodeEncodeError:
      return True
  if isinstance(value, dict):
    return any(_has_bad_utf8(k) or _has_bad_utf8(v) for k, v in value.items())
  if isinstance(value, list):
    return any(_has_bad_utf8(v) for v in value)
  return False


def _text_with_escapes(path: Path) -> str:
  # surrogateescape keeps undecodable bytes as lone surrogates, so the file still parses and
  # each row can be checked (and blamed) on its own.
  data = path.read_bytes()
  if data.startswith(b"\xef\xbb\xbf"):
    data = data[3:]
  return data.decode("utf-8", errors="surrogateescape")


def _read_json(path: Path, bad: BadRows) -> list[Row]:
  try:
    items = json.loads(_text_with_escapes(path))
  except json.JSONDecodeError as e:
    # The file as a whole cannot be read, so there is no row to skip.
    raise DataError(f"{path}: unparseable JSON: {e.msg} at line {e.lineno}, column {e.colno}") from e
  if not isinstance(items, list):
    raise DataError(f"{path}: expected a JSON list of objects, got {type(items).__name__}")
  rows = []
  for i, obj in enumerate(items, 1):
    if _has_bad_utf8(obj):
      bad(str(path), i, "invalid UTF-8 in item", _escaped_repr(obj))
    elif not isinstance(obj, dict):
      bad(str(path), i, f"unparseable row: expected a JSON object, got {type(obj).__name__}", obj)
    else:
      rows.append(Row(obj, str(path), i))
  return rows


def _escaped_repr(obj) -> str:
  return json.dumps(obj, ensure_ascii=True, default=str)


def _records(lines: list[str], start: int, delimiter: str):
  """(first line, last line, fields or None, csv error or '') of each record from 0-based line
  `start` on, parsed with strict quoting. A record that fails is reported at its first line and
  parsing restarts on the line after it, so a stray quote costs its own row, not the rows its
  quoted field swallowed."""
  while start < len(lines):
    reader = csv.reader(lines[start:], delimiter=delimiter, strict=True)
    done = 0  # lines of lines[start:] consumed by complete records
    try:
      for values in reader:
        yield start + done + 1, start + reader.line_num, values, ""
        done = reader.line_num
      return
    except csv.Error as e:
      yield start + done + 1, start + reader.line_num, None, str(e)
      start += done + 1


def _quote_reason(first: int, last: int, error: str) -> str:
  if error == "unexpected end of data":
    return (f"unbalanced quote: the quoted field opened on this row is never closed, so it would "
            f"swallow lines {first}-{last} (the rest of the file)")
  if last > first:
    return (f"unbalanced quote: the quoted field opened on this row runs on to line {last} "
            f"({error}), merging lines {first}-{last}")
  return f"unbalanced quote: {error}"


def _read_delimited(path: Path, bad: BadRows) -> list[Row]:
  """Header row, then one row per record. A quoted field may hold line breaks; a quote that
  is never closed, or is closed mid-field, is a bad row at the line where it opened."""
  delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
  lines = io.StringIO(_text_with_escapes(path), newline="").readlines()
  first, header_end, header, error = next(_records(lines, 0, delimiter), (1, 1, None, "empty"))
  if error == "empty":
    raise DataError(f"{path}: empty file, expected a header row")
  if error:
    raise DataError(f"{path}, row 1: unreadable header row: {_quote_reason(first, header_end, error)}")
  if _has_bad_utf8(header):
    raise DataError(f"{path}, row 1: invalid UTF-8 in the header row")
  header = [h.strip() for h in header]
  if len(set(header)) != len(header) or not all(header):
    raise DataError(f"{path}, row 1: header has empty or repeated column names: {header}")
  rows = []
  for first, last, values, error in _records(lines, header_end, delimiter):
    if error:
      bad(str(path), first, _quote_reason(first, last, error), "".join(lines[first - 1:last]))
    elif not values or values == [""]:
      continue  # a blank line
    elif _has_bad_utf8(values):
      bad(str(path), first, "invalid UTF-8 in row", _escaped_repr(values))
    elif len(values) != len(header):
      spans = f" (a quoted field here runs on to line {last}: check for an unbalanced quote)" if last > first else ""
      bad(str(path), first, f"unparseable row: {len(values)} fields, the header has {len(header)}{spans}",
          delimiter.join(values))
    else:
      rows.append(Row(dict(zip(header, values)), str(path), first))
  return rows


def _read_parquet(path: Path, bad: BadRows) -> list[Row]:
  import pyarrow.parquet as pq

  try:
    table = pq.read_table(path)
  except Exception as e:  # noqa: BLE001 - pyarrow raises several types; all mean "unreadable"
    raise DataError(f"{path}: unreadable parquet file ({e})") from e
  rows = []
  for i, obj in enumerate(table.to_pylist(), 1):
    # Binary columns come back as bytes: decode them here, per row, like the text formats.
    try:
      obj = {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in obj.items()}
    except UnicodeDecodeError as e:
      bad(str(path), i, f"invalid UTF-8 in row at byte {e.start}", obj)
      continue
    rows.append(Row(obj, str(path), i))
  return rows


def _read_txt(path: Path, bad: BadRows, text_key: str) -> list[Row]:
  rows = []
  for i, raw in _lines(path):
    if not raw.strip():
      continue
    text = _decode(raw, path, i, bad)
    if text is not None:
      rows.append(Row({text_key: text}, str(path), i))
  return rows


def read_hub(source: str) -> list[Row]:
  """A `datasets` hub data set: 'name' (its train split) or 'name:split'; needs the internet."""
  name, _, split = source.partition(":")
  try:
    import datasets

    ds = datasets.load_dataset(name, split=split or "train")
  except Exception as e:  # noqa: BLE001 - offline, unknown name, bad split: say which source
    raise DataError(
      f"{source}: not a local file ({', '.join(FILE_FORMATS)}), nor a builtin data set, and "
      f"loading it with datasets.load_dataset failed ({type(e).__name__}: {e})"
    ) from e
  where = f"hub:{name}:{split or 'train'}"
  return [Row(dict(obj), where, i) for i, obj in enumerate(ds, 1)]
