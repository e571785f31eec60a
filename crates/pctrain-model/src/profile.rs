//! Where a step's time goes on a GPU, for `pctrain bench --profile`: while profiling is on, each
//! layer function's forward and backward records a CUDA event on the device's stream as it starts
//! and as it ends, and [`report`] sums the times between them by name. Off (the default), a
//! [`span`] costs one atomic load; on the CPU it records nothing (`perf` profiles the CPU).

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Result};

static ON: AtomicBool = AtomicBool::new(false);

/// Turns the recording of spans on or off.
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Device time spent in one function over the profiled work.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: &'static str,
    pub calls: usize,
    /// Milliseconds between the events around its calls, summed.
    pub ms: f64,
}

#[cfg(feature = "cuda")]
mod events {
    use std::sync::{Arc, Mutex};

    use candle_core::cuda_backend::cudarc::driver::{sys, CudaEvent, CudaStream};

    /// Finished spans: name and the events at its start and end.
    pub static SPANS: Mutex<Vec<(&'static str, CudaEvent, CudaEvent)>> = Mutex::new(Vec::new());

    pub struct Open {
        pub name: &'static str,
        pub stream: Arc<CudaStream>,
        pub start: CudaEvent,
    }

    pub fn record(stream: &CudaStream) -> Option<CudaEvent> {
        stream
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .ok()
    }
}

/// The span of one call (see [`span`]); it ends when dropped.
pub struct Span {
    #[cfg(feature = "cuda")]
    open: Option<events::Open>,
}

/// A span named `name` around work queued on `device` until the span is dropped; nothing unless
/// profiling is on and `device` is a GPU.
pub fn span(name: &'static str, device: &Device) -> Span {
    #[cfg(feature = "cuda")]
    {
        let open = match device {
            Device::Cuda(d) if ON.load(Ordering::Relaxed) => {
                let stream = d.cuda_stream();
                events::record(&stream).map(|start| events::Open {
                    name,
                    stream,
                    start,
                })
            }
            _ => None,
        };
        Span { open }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (name, device, &ON);
        Span {}
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        #[cfg(feature = "cuda")]
        if let Some(open) = self.open.take() {
            if let (Some(end), Ok(mut spans)) = (events::record(&open.stream), events::SPANS.lock())
            {
                spans.push((open.name, open.start, end));
            }
        }
    }
}

/// The recorded spans summed by name, most time first, and forgotten (waits for the device).
pub fn report() -> Result<Vec<Entry>> {
    let mut entries: Vec<Entry> = Vec::new();
    #[cfg(feature = "cuda")]
    {
        let spans = std::mem::take(
            &mut *events::SPANS
                .lock()
                .map_err(|e| candle_core::Error::Msg(format!("the profile: {e}")))?,
        );
        for (name, start, end) in spans {
            let ms = f64::from(
                start
                    .elapsed_ms(&end)
                    .map_err(|e| candle_core::Error::Msg(format!("timing {name}: {e}")))?,
            );
            match entries.iter_mut().find(|e| e.name == name) {
                Some(e) => {
                    e.calls += 1;
                    e.ms += ms;
                }
                None => entries.push(Entry { name, calls: 1, ms }),
            }
        }
    }
    entries.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    Ok(entries)
}
