//! Sums over the ranks' GPUs with NCCL (built with `cuda` and `mpi`): rank 0 makes NCCL's unique
//! id, MPI broadcasts it, and each rank joins with it on its device's stream, so that a sum is
//! queued behind the kernels that wrote its buffer and ahead of those that read it, with nothing
//! copied to the host.

use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::sync::Arc;

use cudarc::driver::CudaStream;
use cudarc::nccl::{result, sys};

use super::DistError;

/// The element types a device sum takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceFloat {
    F32,
    Bf16,
}

impl DeviceFloat {
    fn nccl(self) -> sys::ncclDataType_t {
        match self {
            DeviceFloat::F32 => sys::ncclDataType_t::ncclFloat32,
            DeviceFloat::Bf16 => sys::ncclDataType_t::ncclBfloat16,
        }
    }
}

/// A buffer on this rank's GPU: `count` elements of `dtype` from device address `ptr`.
#[derive(Debug, Clone, Copy)]
pub struct GpuBuffer {
    pub ptr: u64,
    pub count: usize,
    pub dtype: DeviceFloat,
}

fn nccl_err(what: &str, e: result::NcclError) -> DistError {
    DistError::Nccl(format!("{what}: {e:?}"))
}

/// One NCCL communicator over every rank's GPU, on this rank's stream.
pub struct Nccl {
    comm: sys::ncclComm_t,
    stream: Arc<CudaStream>,
}

impl Nccl {
    /// Joins the communicator: `id` is rank 0's unique id, which every rank received.
    pub fn join(
        id: [std::ffi::c_char; 128],
        rank: usize,
        size: usize,
        stream: Arc<CudaStream>,
    ) -> Result<Nccl, DistError> {
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| DistError::Nccl(format!("binding the GPU to this thread: {e:?}")))?;
        let mut comm = MaybeUninit::uninit();
        // SAFETY: `comm` is written by NCCL before it is read; every rank passes the same id,
        // the world size and its own rank.
        let comm = unsafe {
            result::comm_init_rank(
                comm.as_mut_ptr(),
                size as i32,
                sys::ncclUniqueId { internal: id },
                rank as i32,
            )
            .map_err(|e| nccl_err("joining the ranks' GPUs", e))?;
            comm.assume_init()
        };
        Ok(Nccl { comm, stream })
    }

    /// Rank 0's part in making the communicator: a fresh unique id.
    pub fn unique_id() -> Result<[std::ffi::c_char; 128], DistError> {
        let id = result::get_uniqueid().map_err(|e| nccl_err("making NCCL's unique id", e))?;
        Ok(id.internal)
    }

    /// Queues the in-place sums over the ranks of `buffers` on the stream, as one group (one
    /// launch for a LoRA step's hundreds of small tensors).
    ///
    /// # Safety
    /// Each buffer holds its `count` elements of its `dtype` on this communicator's device, and
    /// stays allocated until the stream has run the sums.
    pub unsafe fn sum_all(&self, buffers: &[GpuBuffer]) -> Result<(), DistError> {
        // SAFETY: the caller vouches for each buffer.
        grouped("summing over the ranks' GPUs", buffers.iter(), |b| unsafe {
            result::all_reduce(
                b.ptr as *const c_void,
                b.ptr as *mut c_void,
                b.count,
                b.dtype.nccl(),
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                self.stream.cu_stream() as _,
            )
        })
    }

    /// Queues on the stream, as one group, a broadcast of each buffer from its rank (`roots`, one
    /// per buffer) into every rank's, in place.
    ///
    /// # Safety
    /// As [`Nccl::sum_all`]'s.
    pub unsafe fn broadcast_all(
        &self,
        buffers: &[GpuBuffer],
        roots: &[usize],
    ) -> Result<(), DistError> {
        // SAFETY: the caller vouches for each buffer.
        grouped(
            "sending the updated weights",
            buffers.iter().zip(roots),
            |(b, &root)| unsafe {
                result::broadcast(
                    b.ptr as *const c_void,
                    b.ptr as *mut c_void,
                    b.count,
                    b.dtype.nccl(),
                    root as i32,
                    self.comm,
                    self.stream.cu_stream() as _,
                )
            },
        )
    }
}

/// Makes `call` on each of `items` inside one NCCL group, stopping at a failed call; the group
/// started is ended either way.
fn grouped<T>(
    what: &str,
    items: impl Iterator<Item = T>,
    mut call: impl FnMut(T) -> Result<result::NcclStatus, result::NcclError>,
) -> Result<(), DistError> {
    result::group_start().map_err(|e| nccl_err(what, e))?;
    let failed = items.map(&mut call).find_map(Result::err);
    let ended = result::group_end();
    if let Some(e) = failed {
        return Err(nccl_err(what, e));
    }
    ended.map_err(|e| nccl_err(what, e))?;
    Ok(())
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: the communicator was made by `join` and is destroyed once, here.
        let _ = unsafe { result::comm_destroy(self.comm) };
    }
}
