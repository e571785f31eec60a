//! How the CPU kernels split rows among threads: tasks of a fixed number of rows, decided by the
//! shape alone, so that the split, and every sum over rows, is the same whatever the thread count.

/// Rows per task for rows of `len` elements: about 16K elements a task.
pub fn grain(len: usize) -> usize {
    (1usize << 14).div_ceil(len.max(1))
}

/// A raw pointer to an output that tasks write in disjoint places (rows interleaved in memory,
/// which slices cannot split).
#[derive(Clone, Copy)]
pub struct Out {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: an `Out` is only used through `Out::slice`, whose callers write disjoint ranges.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    pub fn new(data: &mut [f32]) -> Self {
        Out {
            ptr: data.as_mut_ptr(),
            len: data.len(),
        }
    }

    /// Elements `start..start + len`.
    ///
    /// # Safety
    /// No two live slices from one `Out` may overlap, and the buffer it was made from must
    /// outlive them and not be used otherwise meanwhile.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(start + len <= self.len, "a task wrote past its output");
        // SAFETY: in bounds (checked), and disjoint from every other live slice (the caller's
        // promise).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}
