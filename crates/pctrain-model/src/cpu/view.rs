//! f32 views of contiguous CPU tensors: read in place under the storage's read lock, or updated in
//! place under its write lock (every tensor sharing that storage sees the update).

use std::cell::RefCell;
use std::ops::Deref;

use candle_core::{CpuStorage, InplaceOp1, Layout, Result, Storage, StorageRef, Tensor};

/// The elements of a contiguous f32 tensor on the CPU.
pub struct View<'a> {
    guard: StorageRef<'a>,
    start: usize,
    len: usize,
}

impl Deref for View<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.start + self.len],
            _ => unreachable!("checked when the view was made"),
        }
    }
}

/// Where a contiguous tensor's elements lie in its storage.
fn offsets(layout: &Layout, what: &str) -> Result<(usize, usize)> {
    layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: the tensor is not contiguous")))
}

/// A read view of `t`, which must be a contiguous f32 tensor on the CPU.
pub fn view(t: &Tensor) -> Result<View<'_>> {
    let (guard, layout) = t.storage_and_layout();
    if !matches!(&*guard, Storage::Cpu(CpuStorage::F32(_))) {
        candle_core::bail!(
            "a CPU kernel needs an f32 tensor on the CPU, got {:?} on {:?}",
            t.dtype(),
            t.device().location()
        );
    }
    let (start, end) = offsets(layout, "view")?;
    Ok(View {
        guard,
        start,
        len: end - start,
    })
}

/// Runs `f` on the elements of `t` (a contiguous f32 CPU tensor), in place.
pub fn with_mut<R>(t: &Tensor, f: impl FnOnce(&mut [f32]) -> R) -> Result<R> {
    let op = Mutate {
        f: RefCell::new(Some(f)),
        out: RefCell::new(None),
    };
    t.inplace_op1(&op)?;
    Ok(op.out.into_inner().expect("the op ran"))
}

/// The in-place op behind [`with_mut`].
struct Mutate<F, R> {
    f: RefCell<Option<F>>,
    out: RefCell<Option<R>>,
}

impl<F: FnOnce(&mut [f32]) -> R, R> InplaceOp1 for Mutate<F, R> {
    fn name(&self) -> &'static str {
        "pctrain-in-place"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(v) = storage else {
            candle_core::bail!("an in-place CPU kernel needs an f32 tensor");
        };
        let (start, end) = offsets(layout, "in-place update")?;
        let f = self.f.borrow_mut().take().expect("runs once");
        *self.out.borrow_mut() = Some(f(&mut v[start..end]));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    #[test]
    fn updates_in_place_are_seen_by_clones_and_views_read_them() {
        let t = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let shared = t.clone();
        with_mut(&t, |s| s.iter_mut().for_each(|v| *v *= 2.0)).unwrap();
        assert_eq!(&*view(&shared).unwrap(), &[2.0, 4.0, 6.0]);
        let narrow = t.narrow(0, 1, 2).unwrap();
        assert_eq!(&*view(&narrow).unwrap(), &[4.0, 6.0]);
        assert!(view(&t.to_dtype(DType::F64).unwrap()).is_err());
        let strided = Tensor::zeros((2, 3), DType::F32, &Device::Cpu)
            .unwrap()
            .t()
            .unwrap();
        assert!(view(&strided).is_err());
    }
}
