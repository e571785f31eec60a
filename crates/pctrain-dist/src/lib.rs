//! The processes of a run: which one this is (its rank), how many there are (the world), which
//! device on its machine it takes (its local rank), and the sums they agree on. Without the
//! `mpi` feature, or when no MPI launcher started the process, the world is this process alone
//! and every sum is the value itself. Under `mpirun` or `srun` (built with `--features mpi`), the
//! ranks come from MPI and the sums are MPI all-reduces.

use std::fmt;

/// Floats per all-reduce of a long buffer: gradients travel in buckets of this many.
pub const BUCKET: usize = 1 << 22;

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("MPI: {0}")]
    Mpi(String),
    /// Started by an MPI launcher as one of several processes, without MPI to join them.
    #[error(
        "started as one of {0} processes by an MPI launcher, but this pctrain was built without \
         MPI: build it with `cargo build --release --features mpi`"
    )]
    NotBuilt(usize),
}

/// This process's place in the run, and the collectives among its processes.
pub struct World {
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
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
            rank: 0,
            size: 1,
            local_rank: 0,
            local_size: 1,
            #[cfg(feature = "mpi")]
            mpi: None,
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

    /// Replaces `values` on every rank with their sum over the ranks, in buckets of [`BUCKET`].
    pub fn sum_f32(&self, values: &mut [f32]) {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            for bucket in values.chunks_mut(BUCKET) {
                m.sum(bucket);
            }
        }
        let _ = values;
    }

    /// Every rank's `mine` in rank order into `all` (of the length of them all together), on
    /// every rank; `counts[r]` is rank `r`'s length. In rounds of at most [`BUCKET`] floats in
    /// all, so that no count or offset passes MPI's 32-bit counts.
    pub fn all_gather_f32(&self, mine: &[f32], counts: &[usize], all: &mut [f32]) {
        assert_eq!(counts.len(), self.size, "a count per rank");
        assert_eq!(counts[self.rank], mine.len(), "this rank's count");
        assert_eq!(
            counts.iter().sum::<usize>(),
            all.len(),
            "room for every rank's"
        );
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            m.all_gather(mine, counts, all);
            return;
        }
        all.copy_from_slice(mine);
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
mod mpi_world {
    use mpi::collective::SystemOperation;
    use mpi::datatype::PartitionMut;
    use mpi::environment::Universe;
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::traits::*;
    use mpi::Count;

    use super::{DistError, World, BUCKET};

    /// MPI's world communicator, kept with the universe that finalizes MPI when dropped.
    pub struct MpiWorld {
        comm: SimpleCommunicator,
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
                rank: comm.rank() as usize,
                size: comm.size() as usize,
                local_rank: local.rank() as usize,
                local_size: local.size() as usize,
                mpi: Some(MpiWorld {
                    comm,
                    _universe: universe,
                }),
            })
        }

        /// MPI's sum reads one buffer and writes another: `values` is copied first.
        pub fn sum<T: Copy + Equivalence>(&self, values: &mut [T]) {
            let send = values.to_vec();
            self.comm
                .all_reduce_into(&send[..], values, SystemOperation::sum());
        }

        /// [`World::all_gather_f32`]: in round `k` each rank sends its floats `k * share ..`
        /// (`share` [`BUCKET`] over the ranks), received into a round buffer and put in place.
        pub fn all_gather(&self, mine: &[f32], counts: &[usize], all: &mut [f32]) {
            let share = (BUCKET / counts.len()).max(1);
            let starts = offsets(counts);
            let rounds = counts.iter().max().map_or(0, |m| m.div_ceil(share));
            let mut round = Vec::new();
            for k in 0..rounds {
                let part = |c: usize| c.saturating_sub(k * share).min(share);
                let sizes: Vec<Count> = counts.iter().map(|&c| part(c) as Count).collect();
                let displs = offsets(&sizes);
                round.resize(sizes.iter().sum::<Count>() as usize, 0f32);
                let lo = (k * share).min(mine.len());
                let send = &mine[lo..lo + part(mine.len())];
                let mut recv = PartitionMut::new(&mut round[..], &sizes[..], &displs[..]);
                self.comm.all_gather_varcount_into(send, &mut recv);
                for r in 0..counts.len() {
                    let (d, n) = (displs[r] as usize, sizes[r] as usize);
                    let at = starts[r] + k * share;
                    all[at..at + n].copy_from_slice(&round[d..d + n]);
                }
            }
        }

        pub fn abort(&self, code: i32) -> ! {
            self.comm.abort(code)
        }
    }

    /// Where each of `counts` starts when they are laid end to end.
    fn offsets<T: Copy + Default + std::ops::Add<Output = T>>(counts: &[T]) -> Vec<T> {
        counts
            .iter()
            .scan(T::default(), |at, &c| {
                let start = *at;
                *at = *at + c;
                Some(start)
            })
            .collect()
    }
}
