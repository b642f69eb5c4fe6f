#!/usr/bin/env python3
"""Check that a Parquet flow log file reads back exactly as expected.

usage: read_parquet.py [--pyarrow-only] FILE.parquet EXPECTED.json

The file is read with pyarrow (`pyarrow.parquet.read_table`) and with the pure-Python
`parquet` package (`parquet.DictReader`, what flowlogs-reader 5.0.1 uses); the rows of the
latter also go through `flowlogs_reader.FlowRecord`. `--pyarrow-only` skips the `parquet`
package, for files it cannot read (dictionary-encoded pages).

EXPECTED.json:

    {"schema": {"version": "int32", "srcaddr": "string", "bytes": "int64", ...},
     "rows": [{"version": 2, "srcaddr": "10.0.0.1", "bytes": null, ...}, ...]}

`schema` lists every column in file order with its pyarrow type (int32, int64 or string);
each row has a value for every column: an int, a str or null. Values must come back with
the same Python type (int, str, None), not as bytes or strings of digits.
"""

import argparse
import json
import sys
from importlib.metadata import version

import pyarrow
import pyarrow.parquet


class Mismatch(Exception):
    """The file does not read back as expected."""


PY_TYPES = {"int32": int, "int64": int, "string": str}


def check_rows(reader, expected, schema, rows):
    """Compare rows (lists of dicts) from `reader` with the expected rows."""
    if len(rows) != len(expected):
        raise Mismatch(f"{reader}: {len(rows)} rows, expected {len(expected)}")
    columns = list(schema)
    for number, (row, want) in enumerate(zip(rows, expected), start=1):
        if list(row) != columns:
            raise Mismatch(f"{reader}: row {number} has columns {list(row)}, expected {columns}")
        for column in columns:
            got, value = row[column], want[column]
            if value is None:
                ok = got is None
            else:
                ok = type(got) is PY_TYPES[schema[column]] and got == value
            if not ok:
                raise Mismatch(
                    f"{reader}: row {number}, column {column}: got {got!r} "
                    f"({type(got).__name__}), expected {value!r}"
                )


def read_pyarrow(path, schema, expected):
    try:
        table = pyarrow.parquet.read_table(path)
    except pyarrow.ArrowException as e:
        raise Mismatch(f"pyarrow cannot read the file: {e}") from e
    actual = [(field.name, str(field.type)) for field in table.schema]
    if actual != list(schema.items()):
        raise Mismatch(f"pyarrow: schema {actual}, expected {list(schema.items())}")
    check_rows("pyarrow", expected, schema, table.to_pylist())


def read_parquet_package(path, schema, expected):
    import flowlogs_reader
    import parquet

    reader = f"parquet {version('parquet')}"
    try:
        with open(path, "rb") as f:
            rows = [dict(row) for row in parquet.DictReader(f)]
    except Exception as e:  # the package raises anything from struct.error to its own
        raise Mismatch(f"{reader} cannot read the file: {type(e).__name__}: {e}") from e
    check_rows(reader, expected, schema, rows)
    # flowlogs-reader builds its records from these dicts; start/end become datetimes
    # (and may be out of range in synthetic data), so they are left out here.
    for number, row in enumerate(rows, start=1):
        data = {k: v for k, v in row.items() if k not in ("start", "end")}
        record = flowlogs_reader.FlowRecord(data)
        for key, value in data.items():
            if key in flowlogs_reader.FlowRecord.__slots__ and getattr(record, key) != value:
                raise Mismatch(
                    f"flowlogs_reader: row {number}, {key}: got {getattr(record, key)!r}, "
                    f"expected {value!r}"
                )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file")
    parser.add_argument("expected")
    parser.add_argument("--pyarrow-only", action="store_true")
    args = parser.parse_args()
    with open(args.expected, encoding="utf-8") as f:
        expected = json.load(f)
    schema, rows = expected["schema"], expected["rows"]
    readers = [f"pyarrow {pyarrow.__version__}"]
    try:
        read_pyarrow(args.file, schema, rows)
        if not args.pyarrow_only:
            read_parquet_package(args.file, schema, rows)
            readers.append(f"parquet {version('parquet')}")
    except Mismatch as e:
        print(f"mismatch in {args.file}: {e}", file=sys.stderr)
        return 1
    print(f"ok: {len(rows)} rows, {len(schema)} columns, read by {' and '.join(readers)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
