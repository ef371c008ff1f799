//! # coregate
//!
//! A thread-per-core, shared-nothing HTTP/1.1 and WebSocket gateway for voice-AI provider
//! APIs.
//!
//! One glommio (io_uring) executor runs per CPU core, pinned to it. Each of these *shards*
//! owns its own SO_REUSEPORT listener, parser state, route table, provider connection pools
//! and statistics; nothing on the request path is shared between cores. The only
//! cross-core traffic is a stats snapshot each shard ships once per interval to the
//! aggregator thread, which serves `/stats` and `/metrics` on the admin listener.
//!
//! A request's path through the modules:
//!
//! `accept` → `conn` (with `http::request` parsing and `wire` buffering) → `route` →
//! `upstream::pool` / `upstream::forward` (or a local answer) → response back through `conn`;
//! an upgrade request (WebSocket) goes to `upstream::tunnel` and, after the provider's 101,
//! stays a byte tunnel. `deadline` enforces every read timeout with one sweep per thread.
//!
//! `shard` ties one core's pieces together; `server` starts and drains the shards;
//! `stats` counts; `mock` is the provider stand-in used by tests, benchmarks and the
//! embedded default; `doctor` checks a host before it serves; `load` is the load generator
//! that measures all of it. See docs/architecture.md.

pub mod accept;
pub mod admin;
pub mod config;
pub mod conn;
pub mod cores;
pub mod deadline;
pub mod doctor;
pub mod event;
pub mod http;
pub mod load;
pub mod log;
pub mod mock;
pub mod route;
pub mod server;
pub mod shard;
pub mod stats;
pub mod upstream;
pub mod wire;
