//! What pctrain's tests share: what they serve on 127.0.0.1, so that code that talks to the
//! network is exercised without one (a small HTTP/1.1 server, [`http`], and the Hugging Face hub
//! on it, [`hub`]), and how far a bf16 step may be from the f32 one ([`bf16`]). A dev-dependency
//! only: no library links it.

pub mod bf16;
pub mod http;
pub mod hub;
