"""File formats -> records: csv, tsv, json, jsonl, parquet and Arrow files, each record with its place.

A record is a dict (or, for a row the format itself shows to be broken, a `BadRecord`) paired
with where it came from: `("line 3", {...})`, `("item 2", {...})`, `("row 5", {...})`. What a
record must hold to become a row is train/data/rows.py's business; which files a folder
stands for is train/data/folders.py's.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from train.errors import DataError

FORMATS = ("csv", "tsv", "json", "jsonl", "parquet", "arrow")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".arrow": "arrow"}
SPREADSHEETS = (".xlsx", ".xlsm", ".xls", ".ods", ".numbers")
_SAVE_AS_CSV = (
    "Save it as CSV (in Excel: File > Save As > 'CSV UTF-8 (Comma delimited)'; LibreOffice: "
    "File > Save As > 'Text CSV', character set UTF-8) and give that .csv file"
)
# The first bytes of files that are not text, and what they are.
_MAGIC = (
    (b"PK\x03\x04", "a zip archive: an Excel workbook (.xlsx) or other zipped file under a text file's name"),
    (b"\xd0\xcf\x11\xe0", "an old-style Excel (.xls) or other Office file"),
    (b"\x1f\x8b", "gzip-compressed: decompress it first (gunzip)"),
    (b"PAR1", "a parquet file: name it *.parquet or set data.format=parquet"),
)


class BadRecord:
    """A record the file format already shows to be broken (a field count that does not match
    the header): reported or skipped like any other bad row."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def check_file(path: str | Path) -> Path:
    """A path that is read as one file, whatever its extension."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file.")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a data file.")
    return path


def spreadsheet_error(path: Path) -> DataError:
    return DataError(f"{path}: is a spreadsheet, not a data file this project reads (csv, tsv, json, jsonl, parquet). {_SAVE_AS_CSV}.")


def infer_format(path: Path, fmt: str | None) -> str:
    if path.suffix.lower() in SPREADSHEETS:
        raise spreadsheet_error(path)
    if fmt:
        if fmt not in FORMATS:
            raise DataError(f"data.format={fmt!r} is not supported; use one of {', '.join(FORMATS)}.")
        return fmt
    try:
        return EXTENSIONS[path.suffix.lower()]
    except KeyError:
        raise DataError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; "
            f"set data.format to one of {', '.join(FORMATS)}."
        ) from None


def not_utf8(path: Path, e: UnicodeDecodeError, advice: str = "Convert the file to UTF-8.") -> DataError:
    """The error for a file that does not decode: what it really is when its first bytes tell
    (a spreadsheet, an archive), else where decoding failed and `advice`."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        head = b""
    for magic, what in _MAGIC:
        if head.startswith(magic):
            hint = f" {_SAVE_AS_CSV}." if magic in (b"PK\x03\x04", b"\xd0\xcf\x11\xe0") else ""
            return DataError(f"{path}: not a text file but {what}.{hint}")
    return DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start}). {advice}")


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its end-of-line) for each non-blank line; CRLF files included."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            for number, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield number, line
    except UnicodeDecodeError as e:
        raise not_utf8(path, e, "Convert the file to UTF-8, e.g. `iconv -f cp949 -t utf-8 in.tsv > out.tsv`.") from None


def _field_count_problem(found: int, expected: int, sep: str) -> str:
    hint = (
        " (an unquoted comma inside a field, such as the decimal comma in 4,5? Quote the field or write 4.5)"
        if sep == "comma" and found > expected
        else " (a tab inside a sentence?)" if found > expected else ""
    )
    return f"{found} {sep}-separated fields, but the header has {expected}{hint}"


def _records_tsv(path: Path) -> Iterator[tuple[str, dict[str, Any] | BadRecord]]:
    # Plain tab splitting, no CSV quoting: NLP TSVs carry quote characters inside sentences.
    lines = read_lines(path)
    try:
        _, header_line = next(lines)
    except StopIteration:
        return
    header = header_line.split("\t")
    for number, line in lines:
        fields = line.split("\t")
        if len(fields) != len(header):
            yield f"line {number}", BadRecord(_field_count_problem(len(fields), len(header), "tab"))
        else:
            yield f"line {number}", dict(zip(header, fields))


def _records_csv(path: Path) -> Iterator[tuple[str, dict[str, Any] | BadRecord]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                    continue
                expected = len(reader.fieldnames or ())
                if None in row:  # csv puts fields beyond the header under the key None
                    found = expected + len(row[None])
                    yield f"line {reader.line_num}", BadRecord(_field_count_problem(found, expected, "comma"))
                elif any(v is None for v in row.values()):  # fewer fields than the header
                    found = sum(v is not None for v in row.values())
                    yield f"line {reader.line_num}", BadRecord(_field_count_problem(found, expected, "comma"))
                else:
                    yield f"line {reader.line_num}", row
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV file ({e}).") from None


def _header(path: Path, sep: str) -> list[str]:
    for _, line in read_lines(path):
        return next(csv.reader([line])) if sep == "," else line.split(sep)
    return []


def _records_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, line in read_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {number}: not valid JSON ({e.msg}).") from None
        yield f"line {number}", record


def _records_json(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None
    if not text.strip():
        return
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            raise DataError(f"{path}: holds one JSON object per line; set data.format=jsonl.") from None
        raise DataError(f"{path}, line {e.lineno}: not valid JSON ({e.msg}).") from None
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        document = document["data"]
    if not isinstance(document, list):
        raise DataError(f"{path}: expected a JSON array of objects (or {{\"data\": [...]}}), got {type(document).__name__}.")
    for number, record in enumerate(document, start=1):
        yield f"item {number}", record


def _records_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=10_000)
        number = 0
        for batch in batches:
            for record in batch.to_pylist():
                number += 1
                yield f"row {number}", record
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise DataError(f"{path}: not a readable Parquet file ({e}).") from None


def _arrow_batches(path: Path) -> Iterator[Any]:
    """The record batches of an Arrow IPC file: the stream format `datasets` writes
    (save_to_disk, its cache), or the random-access file format."""
    import pyarrow as pa

    source = pa.memory_map(str(path))
    try:
        stream = pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        source.seek(0)
        reader = pa.ipc.open_file(source)
        yield from (reader.get_batch(i) for i in range(reader.num_record_batches))
        return
    yield from stream


def _records_arrow(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    number = 0
    try:
        for batch in _arrow_batches(path):
            for record in batch.to_pylist():
                number += 1
                yield f"row {number}", record
    except Exception as e:  # pyarrow's types for a file that is not Arrow, or is cut short
        raise DataError(f"{path}: not a readable Arrow file ({type(e).__name__}: {e}).") from None


READERS: dict[str, Callable[[Path], Iterator[tuple[str, Any]]]] = {
    "tsv": _records_tsv,
    "csv": _records_csv,
    "json": _records_json,
    "jsonl": _records_jsonl,
    "parquet": _records_parquet,
    "arrow": _records_arrow,
}


def has_path(record: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(record, dict) or part not in record:
            return False
        record = record[part]
    return True


_PEEK = 1000


def read_records(path: Path, fmt: str, wanted: dict[str, str]) -> Iterable[tuple[str, Any]]:
    """The records of a file, streamed, after checking that it has each column in `wanted`
    ({config key: column name or dot path}); a column the file lacks is one error that lists
    the columns it has, not a bad row per line. CSV/TSV are checked against their header;
    JSON/JSONL/parquet/Arrow against their records (a column only needs to occur in one). A JSON
    array is one document and is read whole: write large corpora as JSONL, CSV/TSV or parquet."""
    if fmt in ("csv", "tsv"):
        columns = _header(path, "," if fmt == "csv" else "\t")
        if columns:
            _check_columns(path, wanted, columns.__contains__, columns)
        return READERS[fmt](path)
    # A column only needs to occur in one record. The first records usually settle it; only
    # when they do not is the file scanned once before it is read.
    records = iter(READERS[fmt](path))
    head = list(itertools.islice(records, _PEEK))
    if not head:  # the row check says the file holds no rows
        return head
    if all(any(has_path(r, c) for _, r in head) for c in wanted.values() if c):
        return itertools.chain(head, records)
    seen: dict[str, None] = {}
    found = {c: False for c in wanted.values() if c}
    for _, record in itertools.chain(head, records):
        if isinstance(record, dict):
            seen.update(dict.fromkeys(record))
            for c in found:
                found[c] = found[c] or has_path(record, c)
    _check_columns(path, wanted, found.__getitem__, list(seen))
    return READERS[fmt](path)


def _check_columns(path: Path, wanted: dict[str, str], present: Callable[[str], bool], columns: list) -> None:
    absent = [f"{key}={column!r}" for key, column in wanted.items() if column and not present(column)]
    if absent:
        raise DataError(
            f"{path}: no column {', '.join(absent)}. The file's columns are: {', '.join(map(str, columns)) or 'none'}. "
            "Set data.columns.<name> to one of them."
        )
