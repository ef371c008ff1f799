//! `cargo bench --bench breaking_point`: a breaking-point search against coregate (or nginx
//! from the shared testbed). Sized for this machine by default — from 2,000 VUs in steps
//! of 2,000 up to 18,000 (what 20,000 fds leave), 15 s iterations, 5 s cool-down, 5 %
//! error threshold — so it ends in a few minutes; the seed's own search is
//! `-- --start 1000 --step 500 --iteration 30s --cooldown 10s`.
//! Options as for the scale bench (benches/common/mod.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a harness, like a test

mod common;

fn main() {
    let o = common::Options::from_env();
    let mut args = vec!["--profile".to_string(), "breaking-point".to_string()];
    for (name, default) in [
        ("start", "2000"),
        ("step", "2000"),
        ("max-vus", "18000"),
        ("iteration", "15s"),
        ("cooldown", "5s"),
        ("error-threshold", "5%"),
    ] {
        args.extend(common::flag(&o, name, default));
    }
    let source = o.get("source", "");
    if !source.is_empty() {
        args.extend(["--source".to_string(), source]);
    }
    common::run("breaking_point", &args);
}
