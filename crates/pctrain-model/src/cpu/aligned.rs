//! f32 storage whose first element starts a 64-byte cache line, so that a vector load of a row
//! (of a multiple of 16 elements) never straddles two lines: weights, decoding's buffers and its
//! cache. The allocator promises only 16 bytes; on AVX-512 a straddling load costs two.

use std::ops::{Deref, DerefMut};

use candle_core::{DType, Device, Result, Tensor};

/// Bytes of a cache line.
const LINE: usize = 64;
/// Elements of slack to move the start to a line.
const SLACK: usize = LINE / 4 - 1;

/// Where in `buf` the first line starts.
fn line_start(buf: &[f32]) -> usize {
    (LINE - buf.as_ptr() as usize % LINE) % LINE / 4
}

/// `len` zeros starting a cache line. Zeroed memory is given by the system page by page as it is
/// first written, so a large buffer costs only what is used.
pub struct Aligned {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl Aligned {
    /// `len` zeros, or an error that says how much memory was missing.
    pub fn zeros(len: usize) -> crate::error::Result<Self> {
        let n = len.saturating_add(SLACK);
        let fail = || {
            crate::error::ModelError::Input(format!(
                "cannot allocate {} MB (fewer answers at once, --batch-size, or a smaller \
                 --max-new-tokens need less)",
                n.saturating_mul(4) >> 20
            ))
        };
        let layout = std::alloc::Layout::array::<f32>(n).map_err(|_| fail())?;
        // SAFETY: the layout has a non-zero size (n >= SLACK > 0).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<f32>();
        if ptr.is_null() {
            return Err(fail());
        }
        // SAFETY: the global allocator gave `n` f32s of f32's layout, every one zero (a valid
        // f32), which the vector now owns and frees with that layout.
        let buf = unsafe { Vec::from_raw_parts(ptr, n, n) };
        let start = line_start(&buf);
        Ok(Aligned { buf, start, len })
    }
}

impl Default for Aligned {
    /// No elements, and no allocation.
    fn default() -> Self {
        Aligned {
            buf: Vec::new(),
            start: 0,
            len: 0,
        }
    }
}

impl Deref for Aligned {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl DerefMut for Aligned {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// `t`, when it is an f32 tensor on the CPU, copied into storage whose first element starts a
/// cache line (a view into a slightly larger buffer); any other tensor as it is.
pub fn aligned_tensor(t: Tensor) -> Result<Tensor> {
    if !t.device().is_cpu() || t.dtype() != DType::F32 {
        return Ok(t);
    }
    let n = t.elem_count();
    let (mut buf, start) = line_buffer(n);
    buf[start..start + n].copy_from_slice(&super::view::view(&t.contiguous()?)?);
    line_tensor(buf, start, t.shape())
}

/// An f32 CPU tensor of `shape` from little-endian bytes (a safetensors view), straight into
/// storage whose first element starts a cache line.
pub fn aligned_from_le_bytes(bytes: &[u8], shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    if bytes.len() != 4 * n {
        candle_core::bail!("{} bytes do not hold {n} f32 values", bytes.len());
    }
    let (mut buf, start) = line_buffer(n);
    for (v, b) in buf[start..start + n].iter_mut().zip(bytes.chunks_exact(4)) {
        *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    line_tensor(buf, start, shape)
}

/// Room for `n` elements and where the first line starts in it.
fn line_buffer(n: usize) -> (Vec<f32>, usize) {
    let buf = vec![0f32; n + SLACK];
    let start = line_start(&buf);
    (buf, start)
}

/// The `n` elements of `buf` from `start` as a tensor of `shape`.
fn line_tensor(
    buf: Vec<f32>,
    start: usize,
    shape: impl Into<candle_core::Shape>,
) -> Result<Tensor> {
    let shape = shape.into();
    let n = shape.elem_count();
    let len = buf.len();
    Tensor::from_vec(buf, len, &Device::Cpu)?
        .narrow(0, start, n)?
        .reshape(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_impossible_buffer_is_an_error() {
        let e = Aligned::zeros(usize::MAX / 8)
            .err()
            .expect("no such memory");
        assert!(e.to_string().contains("cannot allocate"), "{e}");
    }

    #[test]
    fn buffers_and_tensors_start_a_cache_line_and_keep_their_values() {
        for len in [1, 17, 1000] {
            let b = Aligned::zeros(len).unwrap();
            assert_eq!(b.as_ptr() as usize % LINE, 0);
            assert_eq!(b.len(), len);
            let t = Tensor::arange(0f32, len as f32, &Device::Cpu)
                .unwrap()
                .reshape((1, len))
                .unwrap();
            let bytes: Vec<u8> = (0..len).flat_map(|i| (i as f32).to_le_bytes()).collect();
            for a in [
                aligned_tensor(t.clone()).unwrap(),
                aligned_from_le_bytes(&bytes, &[1, len]).unwrap(),
            ] {
                assert_eq!(a.dims(), t.dims());
                let v = super::super::view::view(&a).unwrap();
                assert_eq!(v.as_ptr() as usize % LINE, 0);
                assert_eq!(a.to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap());
            }
        }
    }
}
