//! # coregate-gateway
//!
//! The gateway: a thread-per-core, shared-nothing HTTP/1.1 and WebSocket proxy for voice-AI
//! provider APIs, on the shard runtime of `coregate-runtime`.
//!
//! One glommio (io_uring) executor runs per CPU core, pinned to it. Each of these *shards*
//! owns its own SO_REUSEPORT listener, parser state, route table, provider connection pools
//! and statistics; nothing on the request path is shared between cores. The only
//! cross-core traffic is a stats snapshot each shard ships once per interval to the
//! aggregator thread, which serves `/stats` and `/metrics` on the admin listener, a reloaded
//! config, and the new address sets of provider host names that the `resolver` thread sends
//! each shard.
//!
//! A request's path through the modules:
//!
//! `accept` → `session` (the client side: heads parsed by `coregate_http1::request`,
//! buffered by `coregate_runtime::wire`) → `route` → `upstream::exchange` (the provider
//! side: `upstream::pool`, `upstream::forward`, or `upstream::tunnel` for an upgrade) or a
//! local answer → the response back through the session. `upstream::error` names every way
//! a provider exchange fails.
//!
//! `shard` ties one core's pieces together, serving its current config `generation`;
//! `server` starts and drains the shards; `reload` prepares a new config on SIGHUP;
//! `tls` loads the certificates clients see; `budget` sizes connection caps from the fd limit; `stats` counts; `admin` serves the
//! aggregated stats; `doctor` checks a host before it serves. See docs/architecture.md.

pub mod accept;
pub mod access_log;
pub mod admin;
pub mod budget;
pub mod config;
pub mod doctor;
pub mod drain;
pub mod facts;
pub mod generation;
pub mod meter;
pub mod reload;
pub mod request_id;
pub mod resolver;
pub mod route;
pub mod server;
pub mod session;
pub mod shard;
pub mod stats;
pub mod takeover;
pub mod tenants;
pub mod tls;
pub mod upstream;
