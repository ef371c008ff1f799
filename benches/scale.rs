//! `cargo bench --bench scale`: the seed report's scale profile against coregate (or nginx
//! from the shared testbed), sized for this machine — 2 cores, 20,000 fds: stages up to
//! 18,000 VUs, the generator on core 0 and the target on core 1.
//!
//! `cargo bench --bench scale -- --path proxied --stages 10,100,1000 --stage-duration 60s`;
//! every option is also a `COREGATE_BENCH_*` variable (see benches/common/mod.rs).
//! On a bigger host, give the generator and the target more cores (`--load-cores 0-7
//! --server-cores 8-15`) and raise the stages; add `--source 127.0.0.2-127.0.0.60` past
//! ~28K connections per destination.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a harness, like a test

mod common;

fn main() {
    let o = common::Options::from_env();
    let mut args = vec!["--profile".to_string(), "scale".to_string()];
    args.extend(common::flag(
        &o,
        "stages",
        "10,100,500,1000,2000,5000,10000,15000,18000",
    ));
    args.extend(common::flag(&o, "stage-duration", "20s"));
    let source = o.get("source", "");
    if !source.is_empty() {
        args.extend(["--source".to_string(), source]);
    }
    common::run("scale", &args);
}
