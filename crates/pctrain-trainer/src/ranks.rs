//! What a run of several processes adds to a step: each rank's rows of the step, and the sums
//! that make the gradients, the token count and the loss those of the whole step on every rank,
//! so that every rank clips and updates alike and the weights stay equal without being sent.
//! With the optimizer state sharded (ZeRO stage 1), each rank updates its span of the elements
//! and the spans are gathered; with the gradients sharded too (stage 2), each rank keeps and
//! receives the sum of its span's gradients alone.

use candle_core::Tensor;
use pctrain_data::PackedRow;
use pctrain_dist::{World, BUCKET};
use pctrain_model::cpu::view::{view, with_mut};
use pctrain_model::{Gradients, Model, TrainMode};

use crate::optim::{AdamW, AdamWConfig, Shard};

/// Rank `rank`'s share of one micro-batch's `rows` (those of every rank, in the seeded order):
/// rows `rank * batch_size ..` of them, so that `n` ranks with `--batch-size B` train on the rows
/// one process trains on with `--batch-size n*B`.
pub fn my_rows(rows: Vec<PackedRow>, world: &World, batch_size: usize) -> Vec<PackedRow> {
    rows.into_iter()
        .skip(world.rank() * batch_size)
        .take(batch_size)
        .collect()
}

/// This rank's share of the optimizer state at ZeRO `stage` (1: the moments and master copies;
/// 2: the summed gradients too) among the ranks of `world`; none alone or at stage 0. Refuses
/// what is not built: stage 2 on GPUs, and GPUs without NCCL.
pub fn rank_shard(
    model: &Model,
    mode: TrainMode,
    world: &World,
    stage: u8,
) -> candle_core::Result<Option<Shard>> {
    if stage == 0 || world.size() == 1 {
        return Ok(None);
    }
    if stage >= 2 && !model.on_cpu_kernels() {
        candle_core::bail!(
            "--zero-stage 2 is built for f32 weights on the CPU; on GPUs (and with bf16) \
             --zero-stage 1 shards the moments and master weights"
        );
    }
    if model.device().is_cuda() && !world.sums_on_gpu() {
        candle_core::bail!(
            "sharded optimizer state on GPUs needs NCCL: build with --features cuda,mpi"
        );
    }
    let sizes: Vec<usize> = model
        .trainable(mode)
        .iter()
        .map(|(_, t)| t.elem_count())
        .collect();
    Ok(Some(Shard {
        gradients: stage >= 2,
        ..Shard::of(&sizes, world.rank(), world.size())
    }))
}

/// The optimizer of a run that is resumed (`resumed`) or starts afresh, sharded to `shard`: a
/// fresh one is built sharded (the whole state is never held), a whole resumed one is cut to the
/// span, and one resumed as this rank's span is kept.
pub fn rank_optimizer(
    config: AdamWConfig,
    params: &[&Tensor],
    resumed: Option<AdamW>,
    shard: Option<Shard>,
) -> candle_core::Result<AdamW> {
    let mut optimizer = match (resumed, &shard) {
        (Some(o), _) => o,
        (None, Some(s)) => return AdamW::new_sharded(config, params, s.clone()),
        (None, None) => return AdamW::new(config, params),
    };
    if let Some(shard) = shard {
        match &optimizer.shard {
            Some(kept) if kept.ranges != shard.ranges => {
                candle_core::bail!("the optimizer state resumed is not this rank's span of it")
            }
            Some(_) => optimizer.shard = Some(shard),
            None => optimizer.keep_shard(shard)?,
        }
    }
    Ok(optimizer)
}

/// The gradient buffers of a step for `mode`'s tensors of `model`: with the gradients sharded
/// (ZeRO stage 2), this rank keeps its span of each alone.
pub fn rank_gradients(
    model: &Model,
    mode: TrainMode,
    optimizer: &AdamW,
) -> candle_core::Result<Gradients> {
    match &optimizer.shard {
        Some(shard) if shard.gradients => {
            Gradients::zeros_in_spans(model, mode, shard.ranges.clone())
        }
        _ => Gradients::zeros(model, mode),
    }
}

/// Sums every rank's gradients into each rank's, the small buffers gathered into buckets of up
/// to [`BUCKET`] floats so that a LoRA step's hundreds of tensors take a few all-reduces.
pub fn sum_gradients(grads: &mut Gradients, world: &World) -> candle_core::Result<()> {
    if world.size() == 1 {
        return Ok(());
    }
    #[cfg(all(feature = "cuda", feature = "mpi"))]
    if let (Some(tensors), true) = (grads.device(), world.sums_on_gpu()) {
        return sum_on_gpu(tensors, world);
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

/// Sums GPU gradients over the ranks in place (NCCL, one group), queued behind the backward
/// that wrote them on the device's stream.
#[cfg(all(feature = "cuda", feature = "mpi"))]
fn sum_on_gpu(tensors: &[Tensor], world: &World) -> candle_core::Result<()> {
    let buffers = tensors
        .iter()
        .map(|t| gpu_buffer(t, 0..t.elem_count()))
        .collect::<candle_core::Result<Vec<_>>>()?;
    // SAFETY: each address is a contiguous gradient of `count` elements of its type on this
    // rank's GPU, which `grads` keeps until the next step, behind this sum on the stream.
    unsafe { world.sum_on_gpu(&buffers) }.map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// Elements `r` of the contiguous tensor `t` on a GPU, for a collective in place.
#[cfg(all(feature = "cuda", feature = "mpi"))]
fn gpu_buffer(
    t: &Tensor,
    r: std::ops::Range<usize>,
) -> candle_core::Result<pctrain_dist::GpuBuffer> {
    use candle_core::DType;
    use pctrain_dist::DeviceFloat;
    let dtype = match t.dtype() {
        DType::F32 => DeviceFloat::F32,
        DType::BF16 => DeviceFloat::Bf16,
        other => candle_core::bail!("{other:?} tensors are not sent between GPUs"),
    };
    let base = pctrain_model::cuda::device_address(t)?;
    Ok(pctrain_dist::GpuBuffer {
        ptr: base + (r.start * t.dtype().size_in_bytes()) as u64,
        count: r.len(),
        dtype,
    })
}

/// [`share_updates`] on GPUs: each rank's span of each parameter broadcast from it into every
/// rank's (NCCL, one group).
#[cfg(all(feature = "cuda", feature = "mpi"))]
fn share_updates_on_gpu(params: &[&Tensor], world: &World) -> candle_core::Result<()> {
    let sizes: Vec<usize> = params.iter().map(|p| p.elem_count()).collect();
    let (mut buffers, mut roots) = (Vec::new(), Vec::new());
    for q in 0..world.size() {
        let of = Shard::of(&sizes, q, world.size());
        for (p, r) in params.iter().zip(of.ranges) {
            if !r.is_empty() {
                buffers.push(gpu_buffer(p, r)?);
                roots.push(q);
            }
        }
    }
    // SAFETY: each buffer is a span of a contiguous parameter on this rank's GPU, which the
    // model keeps, behind the update that wrote it on the stream.
    unsafe { world.broadcast_on_gpu(&buffers, &roots) }
        .map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// Puts every rank's updated elements into every rank's parameters after a sharded update
/// (ZeRO stage 1): each rank's span, in rank order, is the parameters laid end to end. On the
/// CPU an MPI all-gather; on GPUs NCCL broadcasts from each span's rank.
pub fn share_updates(params: &[&Tensor], shard: &Shard, world: &World) -> candle_core::Result<()> {
    #[cfg(all(feature = "cuda", feature = "mpi"))]
    if params.first().is_some_and(|p| p.device().is_cuda()) {
        return share_updates_on_gpu(params, world);
    }
    let mut mine = Vec::with_capacity(shard.counts.iter().sum::<usize>() / shard.counts.len() + 1);
    for (p, r) in params.iter().zip(&shard.ranges) {
        mine.extend_from_slice(&view(p)?[r.clone()]);
    }
    // Each round's floats go straight into the parameters they belong to.
    let starts: Vec<usize> = params
        .iter()
        .scan(0, |at, p| {
            let start = *at;
            *at += p.elem_count();
            Some(start)
        })
        .collect();
    let mut failed = Ok(());
    world.all_gather_f32(&mine, &shard.counts, |at, floats| {
        let end = at + floats.len();
        for (p, &start) in params.iter().zip(&starts) {
            let (lo, hi) = (at.max(start), end.min(start + p.elem_count()));
            if lo < hi && failed.is_ok() {
                let src = &floats[lo - at..hi - at];
                failed = with_mut(p, |p| p[lo - start..hi - start].copy_from_slice(src));
            }
        }
    });
    failed
}
