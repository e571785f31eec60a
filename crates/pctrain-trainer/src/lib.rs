//! The trainer crate: optimizer, step loop, checkpoints, export (issue 4).
