//! # coregate-runtime
//!
//! What every thread-per-core part of coregate runs on: a pinned glommio (io_uring)
//! executor per core ([`executor`]), listeners ([`listener`]), a connection's buffered socket
//! ([`wire`], with [`spare`] buffers shared by idle connections) whose read timeouts are one sweep per thread ([`deadline`]), a one-shot
//! [`event`], core lists ([`cores`]), host facts ([`host`]), latency histograms
//! ([`histogram`]) the log line format ([`log`]) and TLS configuration ([`tls`]).
//!
//! It knows nothing of the gateway, the mock provider or the load generator, which all
//! build on it; it depends only on `coregate-http1` (a body is read by its framing).

pub mod cores;
pub mod deadline;
pub mod event;
pub mod executor;
pub mod histogram;
pub mod host;
pub mod listener;
pub mod log;
pub mod spare;
pub mod tls;
pub mod wire;
