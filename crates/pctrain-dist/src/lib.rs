//! The processes of a run: which one this is (its rank), how many there are (the world), which
//! device on its machine it takes (its local rank), and the sums they agree on. Without the
//! `mpi` feature, or when no MPI launcher started the process, the world is this process alone
//! and every sum is the value itself. Under `mpirun` or `srun` (built with `--features mpi`), the
//! ranks come from MPI and the sums are MPI all-reduces.

use std::fmt;

mod background;
#[cfg(all(feature = "mpi", feature = "cuda"))]
mod nccl;
#[cfg(any(test, feature = "mpi"))]
mod rounds;
pub use background::{BackgroundSums, Summed};
#[cfg(all(feature = "mpi", feature = "cuda"))]
pub use nccl::{DeviceFloat, GpuBuffer};

/// Floats per all-reduce of a long buffer: gradients travel in buckets of this many.
pub const BUCKET: usize = 1 << 22;

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("MPI: {0}")]
    Mpi(String),
    #[error("NCCL: {0}")]
    Nccl(String),
    /// Started by an MPI launcher as one of several processes, without MPI to join them.
    #[error(
        "started as one of {0} processes by an MPI launcher, but this pctrain was built without \
         MPI: build it with `cargo build --release --features mpi`"
    )]
    NotBuilt(usize),
}

/// Floats this process has given to each kind of collective (on the CPU through MPI, on GPUs
/// through NCCL), since the run started: what a step's communication costs, and which path it took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Summed on every rank (gradients).
    pub all_reduce: u64,
    /// Summed into one rank's span each (ZeRO stage 2's gradients).
    pub reduce_scatter: u64,
    /// Each rank's span shared with every rank (ZeRO's updated weights; broadcasts on GPUs).
    pub all_gather: u64,
    /// Of the sums, those started while this process still computed (gradients summed while
    /// the backward of earlier layers runs).
    pub overlapped: u64,
}

/// This process's place in the run, and the collectives among its processes.
pub struct World {
    traffic: std::cell::Cell<Traffic>,
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
    /// The GPUs' communicator, once [`World::join_gpus`] made it; dropped (destroyed) before
    /// MPI is finalized.
    #[cfg(all(feature = "mpi", feature = "cuda"))]
    nccl: std::sync::OnceLock<nccl::Nccl>,
    #[cfg(feature = "mpi")]
    mpi: Option<mpi_world::MpiWorld>,
}

impl fmt::Debug for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "World {{ rank {} of {}, local rank {} of {} }}",
            self.rank, self.size, self.local_rank, self.local_size
        )
    }
}

impl World {
    /// This process alone.
    pub fn solo() -> Self {
        World {
            traffic: Default::default(),
            rank: 0,
            size: 1,
            local_rank: 0,
            local_size: 1,
            #[cfg(feature = "mpi")]
            mpi: None,
            #[cfg(all(feature = "mpi", feature = "cuda"))]
            nccl: std::sync::OnceLock::new(),
        }
    }

    /// Rank `rank` of `size` with no other rank there: every sum in the background is of this
    /// rank's values from every rank.
    #[cfg(test)]
    pub(crate) fn simulated(rank: usize, size: usize) -> Self {
        World {
            rank,
            size,
            ..World::solo()
        }
    }

    /// The run's world: MPI's when the process was started by an MPI launcher (and the binary
    /// was built with the `mpi` feature), else this process alone.
    pub fn init() -> Result<Self, DistError> {
        #[cfg(feature = "mpi")]
        if launched_by_mpi() {
            return mpi_world::MpiWorld::init();
        }
        // Without MPI, several processes would each train alone into the same folder.
        let size = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
            .iter()
            .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
            .unwrap_or(1);
        if size > 1 {
            return Err(DistError::NotBuilt(size));
        }
        Ok(World::solo())
    }

    /// This process's rank, `0..size`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Processes in the run.
    pub fn size(&self) -> usize {
        self.size
    }

    /// This process's rank among those on its machine (the device it takes).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Processes on this machine.
    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// Whether this process writes the run's files (metrics, checkpoints, exports).
    pub fn is_first(&self) -> bool {
        self.rank == 0
    }

    /// Replaces `values` on every rank with their sum over the ranks (the same on each rank).
    pub fn sum_f64(&self, values: &mut [f64]) {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            m.sum(values);
        }
        let _ = values;
    }

    /// Floats given to each kind of collective so far.
    pub fn traffic(&self) -> Traffic {
        self.traffic.get()
    }

    fn count(&self, add: impl FnOnce(&mut Traffic)) {
        let mut t = self.traffic.get();
        add(&mut t);
        self.traffic.set(t);
    }

    /// Replaces `values` on every rank with their sum over the ranks, in buckets of [`BUCKET`].
    pub fn sum_f32(&self, values: &mut [f32]) {
        self.count(|t| t.all_reduce += values.len() as u64);
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            for bucket in values.chunks_mut(BUCKET) {
                m.sum(bucket);
            }
        }
        let _ = values;
    }

    /// Every rank's `mine` in rank order, on every rank, handed piece by piece to
    /// `put(at, floats)` (`at`: their place among them all); `counts[r]` is rank `r`'s length. In
    /// rounds of at most [`BUCKET`] floats in all, so that no count or offset passes MPI's 32-bit
    /// counts, and no buffer of them all is needed.
    pub fn all_gather_f32(&self, mine: &[f32], counts: &[usize], put: impl FnMut(usize, &[f32])) {
        assert_eq!(counts.len(), self.size, "a count per rank");
        assert_eq!(counts[self.rank], mine.len(), "this rank's count");
        self.count(|t| t.all_gather += mine.len() as u64);
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            m.all_gather(mine, counts, put);
            return;
        }
        let mut put = put;
        put(0, mine);
    }

    /// Rank 0's `value`, on every rank.
    pub fn first_rank_value(&self, value: u32) -> u32 {
        let mut v = [if self.rank == 0 {
            f64::from(value)
        } else {
            0.0
        }];
        self.sum_f64(&mut v);
        v[0] as u32
    }

    /// Whether the ranks on this machine all gave different `values` (their GPUs' UUIDs: no two
    /// ranks share a device), and if not, the local ranks of two that gave the same.
    pub fn distinct_on_machine(&self, value: u64) -> Result<(), (usize, usize)> {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            let all = m.local_all_gather(value);
            for (i, a) in all.iter().enumerate() {
                if let Some(j) = all[i + 1..].iter().position(|b| b == a) {
                    return Err((i, i + 1 + j));
                }
            }
        }
        let _ = value;
        Ok(())
    }

    /// Joins the ranks' GPUs for [`World::sum_on_gpu`] (NCCL, its unique id sent by an MPI
    /// broadcast), on `stream`, this rank's device's: every rank calls it once, after taking its
    /// GPU. Alone, or built without MPI, there is nothing to join.
    #[cfg(feature = "cuda")]
    pub fn join_gpus(
        &self,
        stream: std::sync::Arc<cudarc::driver::CudaStream>,
    ) -> Result<(), DistError> {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            if self.size > 1 {
                let mut id = [0 as std::ffi::c_char; 128];
                if self.rank == 0 {
                    id = nccl::Nccl::unique_id()?;
                }
                m.broadcast_from_first(&mut id);
                let comm = nccl::Nccl::join(id, self.rank, self.size, stream)?;
                let _ = self.nccl.set(comm);
            }
        }
        let _ = stream;
        Ok(())
    }

    /// Whether sums of GPU buffers go through NCCL ([`World::join_gpus`] made its communicator).
    pub fn sums_on_gpu(&self) -> bool {
        #[cfg(all(feature = "mpi", feature = "cuda"))]
        if self.nccl.get().is_some() {
            return true;
        }
        false
    }

    /// Queues on the joined stream the in-place sums over the ranks of `buffers`, as one NCCL
    /// group ([`World::sums_on_gpu`] must hold).
    ///
    /// # Safety
    /// Each buffer's `ptr` holds its `count` elements of its `dtype` on this rank's GPU, and stays
    /// allocated until the stream has run the sums.
    #[cfg(all(feature = "mpi", feature = "cuda"))]
    pub unsafe fn sum_on_gpu(&self, buffers: &[GpuBuffer]) -> Result<(), DistError> {
        let comm = self
            .nccl
            .get()
            .ok_or_else(|| DistError::Nccl("the ranks' GPUs were not joined".into()))?;
        self.count(|t| t.all_reduce += buffers.iter().map(|b| b.count as u64).sum::<u64>());
        comm.sum_all(buffers)
    }

    /// Queues on the joined stream, as one NCCL group, a broadcast of each of `buffers` from the
    /// rank `roots` names for it into every rank's, in place ([`World::sums_on_gpu`] must hold).
    ///
    /// # Safety
    /// As [`World::sum_on_gpu`]'s.
    #[cfg(all(feature = "mpi", feature = "cuda"))]
    pub unsafe fn broadcast_on_gpu(
        &self,
        buffers: &[GpuBuffer],
        roots: &[usize],
    ) -> Result<(), DistError> {
        let comm = self
            .nccl
            .get()
            .ok_or_else(|| DistError::Nccl("the ranks' GPUs were not joined".into()))?;
        let mine = buffers.iter().zip(roots).filter(|(_, &r)| r == self.rank);
        self.count(|t| t.all_gather += mine.map(|(b, _)| b.count as u64).sum::<u64>());
        comm.broadcast_all(buffers, roots)
    }

    /// Whether `flag` is set on any rank.
    pub fn any(&self, flag: bool) -> bool {
        let mut v = [f64::from(u8::from(flag))];
        self.sum_f64(&mut v);
        v[0] > 0.0
    }

    /// Ends every rank of the run: after an error on this one (already reported), the others
    /// would wait for it forever. Alone, the process exits with `code`.
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            m.abort(code);
        }
        std::process::exit(code)
    }
}

/// Whether an MPI launcher (OpenMPI's mpirun, MPICH's Hydra, Slurm's srun with PMI/PMIx)
/// started this process.
#[cfg(feature = "mpi")]
fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

#[cfg(feature = "mpi")]
pub(crate) mod mpi_world {
    use mpi::collective::SystemOperation;
    use mpi::datatype::PartitionMut;
    use mpi::environment::Universe;
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::traits::*;
    use mpi::Count;

    use super::{rounds, DistError, World, BUCKET};

    /// MPI's world communicator, kept with the universe that finalizes MPI when dropped.
    pub struct MpiWorld {
        pub(crate) comm: SimpleCommunicator,
        /// The ranks on this machine.
        local: SimpleCommunicator,
        _universe: Universe,
    }

    impl MpiWorld {
        pub fn init() -> Result<World, DistError> {
            let universe = mpi::initialize()
                .ok_or_else(|| DistError::Mpi("MPI was already initialised".into()))?;
            let comm = universe.world();
            let local = comm.split_shared(comm.rank());
            if comm.size() > 1 {
                // A panic would finalize MPI and wait there for ranks that wait for this one.
                let rank = comm.rank();
                let report = std::panic::take_hook();
                std::panic::set_hook(Box::new(move |info| {
                    report(info);
                    eprintln!("rank {rank} panicked: ending every rank");
                    SimpleCommunicator::world().abort(101);
                }));
            }
            Ok(World {
                traffic: Default::default(),
                rank: comm.rank() as usize,
                size: comm.size() as usize,
                local_rank: local.rank() as usize,
                local_size: local.size() as usize,
                mpi: Some(MpiWorld {
                    comm,
                    local,
                    _universe: universe,
                }),
                #[cfg(feature = "cuda")]
                nccl: std::sync::OnceLock::new(),
            })
        }

        /// Every local rank's `value`, in local rank order.
        pub fn local_all_gather(&self, value: u64) -> Vec<u64> {
            let mut all = vec![0u64; self.local.size() as usize];
            self.local.all_gather_into(&value, &mut all[..]);
            all
        }

        /// Rank 0's `bytes`, on every rank.
        #[cfg(feature = "cuda")]
        pub fn broadcast_from_first(&self, bytes: &mut [std::ffi::c_char]) {
            self.comm.process_at_rank(0).broadcast_into(bytes);
        }

        /// MPI's sum reads one buffer and writes another: `values` is copied first.
        pub fn sum<T: Copy + Equivalence>(&self, values: &mut [T]) {
            let send = values.to_vec();
            self.comm
                .all_reduce_into(&send[..], values, SystemOperation::sum());
        }

        /// [`World::all_gather_f32`], in [`rounds`].
        pub fn all_gather(&self, mine: &[f32], counts: &[usize], put: impl FnMut(usize, &[f32])) {
            let share = (BUCKET / counts.len()).max(1);
            let gather = |send: &[f32], sizes: &[usize], recv: &mut [f32]| {
                let sizes: Vec<Count> = sizes.iter().map(|&n| n as Count).collect();
                let displs = rounds::offsets(&sizes);
                let mut recv = PartitionMut::new(recv, &sizes[..], &displs[..]);
                self.comm.all_gather_varcount_into(send, &mut recv);
            };
            rounds::all_gather(mine, counts, share, gather, put);
        }

        pub fn abort(&self, code: i32) -> ! {
            self.comm.abort(code)
        }
    }
}
