//! What a run of several processes adds to a step: each rank's rows of the step, and the sums
//! that make the gradients, the token count and the loss those of the whole step on every rank,
//! so that every rank clips and updates alike and the weights stay equal without being sent.
//! With the optimizer state sharded (ZeRO stage 1), each rank updates its span of the elements
//! and the spans are gathered.

use std::borrow::Cow;

use candle_core::Tensor;
use pctrain_data::PackedRow;
use pctrain_dist::{World, BUCKET};
use pctrain_model::cpu::view::{view, with_mut};
use pctrain_model::Gradients;

use crate::optim::{AdamW, Shard};

/// Rank `rank`'s share of one micro-batch's `rows` (those of every rank, in the seeded order):
/// rows `rank * batch_size ..` of them, so that `n` ranks with `--batch-size B` train on the rows
/// one process trains on with `--batch-size n*B`.
pub fn my_rows(rows: Vec<PackedRow>, world: &World, batch_size: usize) -> Vec<PackedRow> {
    rows.into_iter()
        .skip(world.rank() * batch_size)
        .take(batch_size)
        .collect()
}

/// Sums every rank's gradients into each rank's, the small buffers gathered into buckets of up
/// to [`BUCKET`] floats so that a LoRA step's hundreds of tensors take a few all-reduces.
pub fn sum_gradients(grads: &mut Gradients, world: &World) -> candle_core::Result<()> {
    if world.size() == 1 {
        return Ok(());
    }
    grads
        .with_host_values(|bufs| {
            let mut bucket: Vec<f32> = Vec::new();
            let mut members: Vec<usize> = Vec::new();
            let flush =
                |bucket: &mut Vec<f32>, members: &mut Vec<usize>, bufs: &mut [&mut [f32]]| {
                    if members.is_empty() {
                        return;
                    }
                    world.sum_f32(bucket);
                    let mut at = 0;
                    for &i in members.iter() {
                        let n = bufs[i].len();
                        bufs[i].copy_from_slice(&bucket[at..at + n]);
                        at += n;
                    }
                    bucket.clear();
                    members.clear();
                };
            for i in 0..bufs.len() {
                if bufs[i].len() >= BUCKET {
                    world.sum_f32(bufs[i]);
                    continue;
                }
                if bucket.len() + bufs[i].len() > BUCKET {
                    flush(&mut bucket, &mut members, bufs);
                }
                bucket.extend_from_slice(bufs[i]);
                members.push(i);
            }
            flush(&mut bucket, &mut members, bufs);
        })
        .map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// Puts every rank's updated elements into every rank's parameters after a sharded update
/// (ZeRO stage 1): each rank's span, in rank order, is the parameters laid end to end.
pub fn share_updates(params: &[&Tensor], shard: &Shard, world: &World) -> candle_core::Result<()> {
    let mine = params
        .iter()
        .zip(&shard.ranges)
        .map(|(p, r)| Ok(view(p)?[r.clone()].to_vec()))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let all = gather_spans(&mine, shard, world);
    let mut at = 0;
    for p in params {
        let n = p.elem_count();
        with_mut(p, |p| p.copy_from_slice(&all[at..at + n]))?;
        at += n;
    }
    Ok(())
}

/// The optimizer with every rank's moments gathered (what a checkpoint holds): itself when its
/// state is whole, else a gathered copy. Every rank must call it, as each takes part.
pub fn whole_optimizer<'a>(
    optimizer: &'a AdamW,
    params: &[&Tensor],
    world: &World,
) -> candle_core::Result<Cow<'a, AdamW>> {
    let Some(shard) = &optimizer.shard else {
        return Ok(Cow::Borrowed(optimizer));
    };
    let gather = |parts: &[Tensor]| -> candle_core::Result<Vec<Tensor>> {
        let mine = parts
            .iter()
            .map(|t| Ok(view(t)?.to_vec()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let all = gather_spans(&mine, shard, world);
        let mut at = 0;
        params
            .iter()
            .map(|p| {
                let n = p.elem_count();
                at += n;
                Tensor::from_slice(&all[at - n..at], p.shape(), p.device())
            })
            .collect()
    };
    Ok(Cow::Owned(AdamW {
        config: optimizer.config,
        step: optimizer.step,
        m: gather(&optimizer.m)?,
        v: gather(&optimizer.v)?,
        master: optimizer.master.clone(),
        shard: None,
    }))
}

/// Every rank's span (`mine`: its pieces, per parameter, in order) gathered into the whole, the
/// parameters laid end to end.
fn gather_spans(mine: &[Vec<f32>], shard: &Shard, world: &World) -> Vec<f32> {
    let mine = mine.concat();
    let mut all = vec![0f32; shard.counts.iter().sum()];
    world.all_gather_f32(&mine, &shard.counts, &mut all);
    all
}
