//! Shared by `cargo bench --bench scale` and `--bench breaking_point`: starts a target
//! (coregate with its mock provider, or nginx from the shared testbed), pinned to cores,
//! and runs `coregate load` against it with a profile.
//!
//! Options come as `--name value` after `--` or as `COREGATE_BENCH_NAME` variables:
//! `target` (coregate | nginx), `path` (health | proxied), `load-cores` (default 0),
//! `server-cores` (default 1), `upstream-cores` (default: the load cores, as in the
//! testbed), `out` (default target/bench/<bench>-<target>-<path>), `testbed` (default
//! ../shared/bench), plus the profile's own flags, passed to `coregate load` as given.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// The integration tests' helpers (free ports, waiting for a listener, the binary's path).
#[path = "../../tests/common/mod.rs"]
mod harness;
use harness::{free_port, BIN};

/// Waits up to 15 s for a listener (panics with the port if none comes).
fn wait_port(port: u16) {
    harness::wait_port(port, Duration::from_secs(15));
}

/// Options from the command line (after `--`) and the environment.
pub struct Options {
    args: Vec<(String, String)>,
}

impl Options {
    pub fn from_env() -> Options {
        let mut args = Vec::new();
        let mut it = std::env::args().skip(1).peekable();
        while let Some(a) = it.next() {
            // cargo bench passes `--bench`; libtest-style flags are not ours.
            let Some(name) = a.strip_prefix("--") else {
                continue;
            };
            if name == "bench" {
                continue;
            }
            if let Some(v) = it.next_if(|v| !v.starts_with("--")) {
                args.push((name.to_string(), v));
            }
        }
        Options { args }
    }

    pub fn get(&self, name: &str, default: &str) -> String {
        if let Some((_, v)) = self.args.iter().rev().find(|(n, _)| n == name) {
            return v.clone();
        }
        let env = format!("COREGATE_BENCH_{}", name.to_uppercase().replace('-', "_"));
        std::env::var(env).unwrap_or_else(|_| default.to_string())
    }
}

/// Ends a benchmark run with its reason (a harness, not the gateway: exiting is its answer).
#[allow(clippy::exit)]
pub fn fail(msg: &str) -> ! {
    eprintln!("bench: {msg}");
    std::process::exit(1)
}

/// Processes started by the bench; killed when dropped.
pub struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
        }
        for c in &mut self.0 {
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(procs: &mut Procs, cores: &str, program: &str, args: &[&str], log: PathBuf) -> u32 {
    let out =
        std::fs::File::create(&log).unwrap_or_else(|e| fail(&format!("{}: {e}", log.display())));
    let err = out.try_clone().unwrap_or_else(|e| fail(&e.to_string()));
    let child = Command::new("taskset")
        .args(["-c", cores, program])
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot start {program}: {e}")));
    let pid = child.id();
    procs.0.push(child);
    pid
}

/// A started target: the URL to load and the PID to sample.
pub struct Target {
    pub url: String,
    pub pid: u32,
    pub procs: Procs,
}

pub fn start_target(o: &Options, out: &std::path::Path) -> Target {
    let target = o.get("target", "coregate");
    let path = o.get("path", "health");
    let server = o.get("server-cores", "1");
    let upstream_cores = o.get("upstream-cores", &o.get("load-cores", "0"));
    let mut procs = Procs(Vec::new());
    let (port, up) = (free_port(), free_port());
    let up_addr = format!("127.0.0.1:{up}");
    let pid = match target.as_str() {
        "coregate" => {
            start(
                &mut procs,
                &upstream_cores,
                BIN,
                &[
                    "mock-provider",
                    "--listen",
                    &up_addr,
                    "--cores",
                    &upstream_cores,
                ],
                out.join("mock.log"),
            );
            wait_port(up);
            let listen = format!("127.0.0.1:{port}");
            let pid = start(
                &mut procs,
                &server,
                BIN,
                &[
                    "serve",
                    "--cores",
                    &server,
                    "--listen",
                    &listen,
                    "--admin",
                    "",
                    "--upstream",
                    &up_addr,
                ],
                out.join("gateway.log"),
            );
            wait_port(port);
            pid
        }
        "nginx" => {
            let testbed = PathBuf::from(o.get(
                "testbed",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/bench"),
            ));
            let upstream = testbed.join("upstream/start.sh");
            let proxy = testbed.join("proxies/nginx/start.sh");
            if !upstream.exists() || !proxy.exists() {
                fail(&format!(
                    "no testbed at {} (set --testbed)",
                    testbed.display()
                ));
            }
            let mut up_cmd = Command::new("taskset");
            up_cmd
                .args(["-c", &upstream_cores])
                .arg(&upstream)
                .arg("--fg")
                .env("UPSTREAM_LISTEN", &up_addr)
                .env("UPSTREAM_DIR", out.join("upstream"))
                .env("UPSTREAM_PIDFILE", out.join("upstream.pid"))
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            procs.0.push(
                up_cmd
                    .spawn()
                    .unwrap_or_else(|e| fail(&format!("upstream: {e}"))),
            );
            wait_port(up);
            let proxy_s = proxy.to_string_lossy().into_owned();
            let pid = start(
                &mut procs,
                &server,
                &proxy_s,
                &["1", &port.to_string(), &up_addr],
                out.join("nginx.log"),
            );
            wait_port(port);
            pid
        }
        other => fail(&format!("--target {other}: use coregate or nginx")),
    };
    let url_path = match (path.as_str(), target.as_str()) {
        ("health", "coregate") => "/health",
        ("health", _) => "/",
        ("proxied", _) => "/api/small",
        (other, _) => fail(&format!("--path {other}: use health or proxied")),
    };
    Target {
        url: format!("http://127.0.0.1:{port}{url_path}"),
        pid,
        procs,
    }
}

/// Starts the target, runs `coregate load` with `profile_args`, prints where the results are.
pub fn run(bench: &str, profile_args: &[String]) {
    let o = Options::from_env();
    let target = o.get("target", "coregate");
    let path = o.get("path", "health");
    let out = PathBuf::from(o.get(
        "out",
        &format!(
            "{}/target/bench/{bench}-{target}-{path}",
            env!("CARGO_MANIFEST_DIR")
        ),
    ));
    let _ = std::fs::remove_dir_all(&out);
    if let Err(e) = std::fs::create_dir_all(&out) {
        fail(&format!("{}: {e}", out.display()));
    }
    let t = start_target(&o, &out);
    let load_cores = o.get("load-cores", "0");
    let pid = t.pid.to_string();
    let out_s = out.to_string_lossy().into_owned();
    let mut args: Vec<String> = vec![
        "load".into(),
        t.url.clone(),
        "--cores".into(),
        load_cores,
        "--pid".into(),
        pid,
        "--out".into(),
        out_s,
    ];
    args.extend(profile_args.iter().cloned());
    eprintln!("bench {bench}: {target} {path}: {BIN} {}", args.join(" "));
    let status = Command::new(BIN)
        .args(&args)
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run coregate load: {e}")));
    drop(t.procs);
    if !status.success() {
        fail("coregate load failed");
    }
    eprintln!("bench {bench}: results in {}", out.display());
}

/// The profile flag `name` from the options, else `default`.
pub fn flag(o: &Options, name: &str, default: &str) -> [String; 2] {
    [format!("--{name}"), o.get(name, default)]
}
