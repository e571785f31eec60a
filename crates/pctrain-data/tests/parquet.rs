//! Parquet files give the same records as their JSONL source (fixtures written by
//! scripts/make_parquet_fixtures.py), and a bad row is named by file and row.

mod common;

use std::path::PathBuf;

use pctrain_data::{JsonlReader, RecordReader};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parquet")
        .join(name)
}

#[test]
fn parquet_rows_equal_the_jsonl_records() {
    let from_parquet: Vec<_> = RecordReader::open(fixture("tulu-sample.parquet"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let from_jsonl: Vec<_> = JsonlReader::open(&common::examples()[0])
        .unwrap()
        .take(12)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(from_parquet.len(), 12, "two row groups, all rows");
    assert_eq!(from_parquet, from_jsonl);
}

#[test]
fn a_bad_parquet_row_is_named_by_file_and_row() {
    let path = fixture("bad-role.parquet");
    let results: Vec<_> = RecordReader::open(&path).unwrap().collect();
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok() && results[2].is_ok());
    let err = results[1].as_ref().unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}:2: messages[0].role", path.display())),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_parquet_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.parquet");
    std::fs::write(&path, "{\"instruction\": \"a\", \"output\": \"b\"}\n").unwrap();
    let err = RecordReader::open(&path).err().unwrap().to_string();
    assert!(err.contains("not a readable Parquet file"), "{err}");
}

#[test]
fn the_pipeline_reads_parquet_and_jsonl_alike() {
    let p = common::pipeline("nl-pc", "auto", 4096);
    let (from_parquet, _) = p.encode_all(&[fixture("tulu-sample.parquet")]).unwrap();
    let (from_jsonl, _) = p.encode_all(&common::examples()[..1]).unwrap();
    assert_eq!(from_parquet[..], from_jsonl[..12]);
}
