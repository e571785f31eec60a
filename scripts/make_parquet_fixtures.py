#!/usr/bin/env python3
"""Write the small Parquet fixtures of pctrain-data's tests from the shipped JSONL examples.

    pip install --target /tmp/pyarrow-env pyarrow
    PYTHONPATH=/tmp/pyarrow-env python3 scripts/make_parquet_fixtures.py

tulu-sample.parquet: the first 12 records of examples/tulu-pc.jsonl, with `pseudo_code` as a list
per user turn (Parquet needs one type per column), snappy-compressed, two row groups.
bad-role.parquet: three records, the second with an unknown role, zstd-compressed.
"""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/pctrain-data/tests/fixtures/parquet"

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("dataset", pa.string()),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("pseudo_code", pa.list_(pa.string())),
    ]
)


def as_row(record: dict) -> dict:
    users = sum(1 for m in record["messages"] if m["role"] == "user")
    pc = record.get("pseudo_code")
    if isinstance(pc, str):
        pc = [pc] + [None] * (users - 1)
    return {
        "id": record["id"],
        "dataset": record.get("dataset"),
        "messages": record["messages"],
        "pseudo_code": pc,
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    lines = (ROOT / "examples/tulu-pc.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [as_row(json.loads(line)) for line in lines[:12]]
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    pq.write_table(table, OUT / "tulu-sample.parquet", compression="snappy", row_group_size=5)

    bad = [dict(r) for r in rows[:3]]
    bad[1] = dict(bad[1], messages=[{"role": "tool", "content": "x"}], pseudo_code=None)
    table = pa.Table.from_pylist(bad, schema=SCHEMA)
    pq.write_table(table, OUT / "bad-role.parquet", compression="zstd")
    print("wrote", sorted(p.name for p in OUT.iterdir()))


if __name__ == "__main__":
    main()
