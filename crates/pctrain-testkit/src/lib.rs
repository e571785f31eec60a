//! What pctrain's tests serve on 127.0.0.1, so that code that talks to the network is exercised
//! without one: a small HTTP/1.1 server ([`http`]) and the Hugging Face hub on it ([`hub`]). A
//! dev-dependency only: no library links it.

pub mod http;
pub mod hub;
