//! Packing: every sample once, attention never crosses samples, positions restart; epochs are
//! seeded shuffles, and iteration resumes exactly from a position.

mod common;

use pctrain_data::loader::{epoch_rows, packing_efficiency};
use pctrain_data::{Encoded, Format, Loader, LoaderConfig, PackedRow, Position, IGNORE_INDEX};

/// Samples with distinct, recognisable token ids: sample `i` holds ids `1000 * (i + 1) + j`.
fn samples(lengths: &[usize]) -> Vec<Encoded> {
    lengths
        .iter()
        .enumerate()
        .map(|(i, &n)| Encoded {
            id: format!("s{i}"),
            format: Format::Nl,
            input_ids: (0..n as u32).map(|j| 1000 * (i as u32 + 1) + j).collect(),
            trained: (0..n).map(|j| j >= n / 2).collect(),
            truncated: false,
        })
        .collect()
}

fn cfg(seq_len: usize) -> LoaderConfig {
    LoaderConfig {
        seq_len,
        packing: true,
        shuffle: true,
        seed: 7,
        epochs: 3,
        pack_window: 64,
    }
}

#[test]
fn packed_rows_keep_samples_apart() {
    let data = samples(&[5, 9, 3, 12, 7, 1, 8, 4, 6, 2]);
    let rows: Vec<PackedRow> = Loader::new(&data, cfg(16), 0, Position::default())
        .unwrap()
        .map(|(_, r)| r)
        .take_while({
            let mut n = 0;
            let per_epoch = epoch_rows(&data, &cfg(16), 0).len();
            move |_| {
                n += 1;
                n <= per_epoch
            }
        })
        .collect();
    let mut seen = Vec::new();
    for row in &rows {
        assert_eq!(row.input_ids.len(), 16);
        for q in 0..16 {
            let seg = row.segment_ids[q];
            if seg == 0 {
                // Padding: pad id, ignored, attends to nothing.
                assert_eq!(row.input_ids[q], 0);
                assert_eq!(row.labels[q], IGNORE_INDEX);
                continue;
            }
            // Positions restart at each sample's first token.
            let start = (0..=q)
                .rev()
                .take_while(|&k| row.segment_ids[k] == seg)
                .last()
                .unwrap();
            assert_eq!(row.position_ids[q] as usize, q - start);
            // Ids of one segment come from one sample.
            assert_eq!(row.input_ids[q] / 1000, row.input_ids[start] / 1000);
            // Segments are contiguous runs: a query's sample is exactly the run around it, so a
            // mask built from segment ids (the model's) keeps samples apart.
            let end = (q..16)
                .take_while(|&k| row.segment_ids[k] == seg)
                .last()
                .unwrap();
            for k in 0..16 {
                let inside = (start..=end).contains(&k);
                assert_eq!(row.segment_ids[k] == seg, inside, "q {q} k {k}");
            }
        }
        for q in 0..16 {
            if row.position_ids[q] == 0 && row.segment_ids[q] != 0 {
                seen.push(row.input_ids[q] / 1000 - 1);
            }
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..10).collect::<Vec<_>>(),
        "each sample exactly once per epoch"
    );
}

#[test]
fn labels_survive_packing() {
    let data = samples(&[4, 6]);
    let row = Loader::new(&data, cfg(16), 0, Position::default())
        .unwrap()
        .next()
        .unwrap()
        .1;
    let mut expected: Vec<i64> = Vec::new();
    for q in 0..16 {
        if row.segment_ids[q] == 0 {
            continue;
        }
        let sample = (row.input_ids[q] / 1000 - 1) as usize;
        expected.push(data[sample].labels()[row.position_ids[q] as usize]);
    }
    let got: Vec<i64> = (0..16)
        .filter(|&q| row.segment_ids[q] != 0)
        .map(|q| row.labels[q])
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn no_packing_gives_one_sample_a_row() {
    let data = samples(&[5, 9, 3]);
    let c = LoaderConfig {
        packing: false,
        ..cfg(16)
    };
    let rows = epoch_rows(&data, &c, 0);
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.samples.len() == 1));
    assert!(packing_efficiency(&rows, 16) < 0.4);
    assert!(packing_efficiency(&epoch_rows(&data, &cfg(17), 0), 17) == 1.0);
}

#[test]
fn epochs_shuffle_by_seed() {
    let data = samples(&(1..40).collect::<Vec<_>>());
    let c = cfg(64);
    assert_eq!(epoch_rows(&data, &c, 0), epoch_rows(&data, &c, 0));
    assert_ne!(epoch_rows(&data, &c, 0), epoch_rows(&data, &c, 1));
    let other_seed = LoaderConfig {
        seed: 8,
        ..c.clone()
    };
    assert_ne!(epoch_rows(&data, &c, 0), epoch_rows(&data, &other_seed, 0));
    let unshuffled = LoaderConfig {
        shuffle: false,
        packing: false,
        ..c
    };
    let order: Vec<usize> = epoch_rows(&data, &unshuffled, 0)
        .iter()
        .map(|r| r.samples[0])
        .collect();
    assert_eq!(order, (0..39).collect::<Vec<_>>());
}

#[test]
fn resuming_from_a_position_continues_exactly() {
    let data = samples(&[5, 9, 3, 12, 7, 1, 8, 4, 6, 2, 11, 10]);
    let all: Vec<(Position, PackedRow)> = Loader::new(&data, cfg(16), 0, Position::default())
        .unwrap()
        .collect();
    let per_epoch = epoch_rows(&data, &cfg(16), 0).len();
    assert_eq!(all.len(), 3 * per_epoch, "three epochs");
    for stop in [1, per_epoch - 1, per_epoch, per_epoch + 2, all.len() - 1] {
        let mut first = Loader::new(&data, cfg(16), 0, Position::default()).unwrap();
        for _ in 0..stop {
            first.next();
        }
        let pos = first.position();
        // The position survives serialisation, as a checkpoint stores it.
        let pos: Position = serde_json::from_str(&serde_json::to_string(&pos).unwrap()).unwrap();
        let resumed: Vec<(Position, PackedRow)> =
            Loader::new(&data, cfg(16), 0, pos).unwrap().collect();
        assert_eq!(resumed, all[stop..], "resumed after {stop} rows");
    }
}

#[test]
fn a_position_past_the_epoch_is_refused() {
    let data = samples(&[5, 9]);
    let err = Loader::new(
        &data,
        cfg(16),
        0,
        Position {
            epoch: 0,
            index: 99,
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("past the end"), "{err}");
}

#[test]
fn shipped_examples_pack_densely() {
    let p = common::pipeline("nl-pc", "auto", 1024);
    let (data, _) = p.encode_all(&common::examples()).unwrap();
    let rows = epoch_rows(&data, &cfg(1024), 0);
    let total: usize = data.iter().map(Encoded::len).sum();
    assert_eq!(rows.iter().map(|r| r.tokens).sum::<usize>(), total);
    assert!(packing_efficiency(&rows, 1024) > 0.9);
}
