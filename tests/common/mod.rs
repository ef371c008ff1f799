//! Helpers for the integration tests: real processes on real loopback sockets.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod certs;
mod files;
// Re-exported beside the rest: each test binary uses only some of the helpers.
#[allow(unused_imports)]
pub use files::*;
pub mod load;
pub mod tenants;
pub mod upstream;

pub const BIN: &str = env!("CARGO_BIN_EXE_coregate");

/// A free loopback port (bound then released), never one this test binary was given
/// before: the kernel may hand a released ephemeral port out again at once, and a gateway
/// whose listen and admin ports came out equal refuses to start (seen in CI).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A fresh scratch directory for one test, removed when the test binary exits (passed or
/// failed: a failing test prints the logs it needs in its panic message).
/// `COREGATE_KEEP_TEST_DIRS=1` keeps them for a look afterwards.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("coregate-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmpdir");
    remove_at_exit(d.clone());
    d
}

static SCRATCH: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn remove_at_exit(dir: PathBuf) {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        // SAFETY: atexit only stores the function pointer; remove_scratch is a plain
        // extern "C" fn that does not unwind.
        unsafe { libc::atexit(remove_scratch) };
    });
    SCRATCH.lock().unwrap_or_else(|e| e.into_inner()).push(dir);
}

/// Runs at the test binary's exit (after every test, and after a failure's exit(101)).
extern "C" fn remove_scratch() {
    if std::env::var_os("COREGATE_KEEP_TEST_DIRS").is_some_and(|v| v == "1") {
        return;
    }
    let dirs = std::mem::take(&mut *SCRATCH.lock().unwrap_or_else(|e| e.into_inner()));
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Sends signal `sig` to process `pid` (libc::kill, so no `kill` program is needed).
pub fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; a stale pid only makes it fail.
    unsafe { libc::kill(pid, sig) };
}

/// The one gate for outside tools (programs, Python packages) a test drives: `probe` says
/// whether `tool` is here. When it is not, the test is skipped: this prints
/// `SKIPPED: <tool> not installed` to stderr and returns false, and the caller returns
/// early (and passes). With `COREGATE_REQUIRE_TOOLS=1` (.ci/run, after it installs the
/// tools) a missing tool fails the test instead, so CI never skips silently.
pub fn tool_available(tool: &str, probe: impl FnOnce() -> bool) -> bool {
    if probe() {
        return true;
    }
    if std::env::var_os("COREGATE_REQUIRE_TOOLS").is_some_and(|v| v == "1") {
        panic!(
            "{tool} not installed, and COREGATE_REQUIRE_TOOLS=1 requires it (.ci/run installs it)"
        );
    }
    skipped(format_args!("{tool} not installed"));
    false
}

/// `tool_available` for a program looked up on PATH, as `Command::new` looks it up.
pub fn require_tool(program: &str) -> bool {
    tool_available(program, || on_path(program))
}

/// `tool_available` for a Python package (the tool is named `python3 <module>`): the first
/// of `python3` on PATH and `/usr/bin/python3` that imports `module`.
pub fn require_python_module(module: &str) -> Option<&'static str> {
    let mut found = None;
    let tool = format!("python3 {module}");
    tool_available(&tool, || {
        found = ["python3", "/usr/bin/python3"].into_iter().find(|py| {
            Command::new(py)
                .args(["-c", &format!("import {module}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        found.is_some()
    })
    .then_some(found)
    .flatten()
}

/// Raises this test process's soft RLIMIT_NOFILE to its hard limit (a fresh machine often
/// starts at 1,024) and returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the one struct passed, which lives across
    // both calls.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: as above.
    unsafe {
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

/// Whether this test may make a private network namespace: root, `unshare` (through
/// `require_tool`), and a kernel/container that lets `unshare -n` run. Prints why not.
pub fn private_netns_allowed() -> bool {
    unshare_allowed("-n")
}

/// Whether `unshare <flag>` (`-n` network, `-m` mount namespace) works here. When it does
/// not (not root, no CAP_SYS_ADMIN, a container that refuses namespaces) the test is skipped
/// with `SKIPPED: unshare (<why>)`, or fails under `COREGATE_REQUIRE_TOOLS=1`: CI runs as
/// root, and a test that cannot run there must not pass without running.
pub fn unshare_allowed(flag: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return unavailable(
            "unshare",
            format_args!("needs root for a private namespace, unshare {flag}"),
        );
    }
    if !require_tool("unshare") {
        return false;
    }
    let ok = Command::new("unshare")
        .args([flag, "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok || unavailable(
        "unshare",
        format_args!("`unshare {flag}` is refused here (no CAP_SYS_ADMIN?)"),
    )
}

/// A tool that is installed but cannot run here: fails the test under
/// `COREGATE_REQUIRE_TOOLS=1`, else prints `SKIPPED: <tool> (<why>)`. Returns false.
fn unavailable(tool: &str, why: std::fmt::Arguments) -> bool {
    if std::env::var_os("COREGATE_REQUIRE_TOOLS").is_some_and(|v| v == "1") {
        panic!("{tool}: {why}, and COREGATE_REQUIRE_TOOLS=1 requires it (CI runs as root)");
    }
    skipped(format_args!("{tool} ({why})"));
    false
}

/// Prints `SKIPPED: <why>` straight to stderr: not through eprintln!, which the test harness
/// captures (and hides for a passing test), so a plain `cargo test` shows what was skipped.
fn skipped(why: std::fmt::Arguments) {
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(std::path::Path::new(program));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(program))))
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: libc::c_int) {
        signal(self.pid(), sig);
    }

    /// Waits for exit up to `timeout`; returns the exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(args: &[&str], log: PathBuf) -> Proc {
    spawn_command(Command::new(BIN).args(args), log)
}

/// Starts `cmd` with its output in `log`; killed when the `Proc` is dropped.
pub fn spawn_command(cmd: &mut Command, log: PathBuf) -> Proc {
    let f = std::fs::File::create(&log).expect("log file");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone().expect("log"))
        .stderr(f)
        .spawn()
        .expect("spawn");
    Proc { child, log }
}

/// Starts a separate mock provider process on a free port.
pub fn mock_provider(name: &str, port: u16) -> Proc {
    mock_provider_with(name, port, &[])
}

/// [`mock_provider`] with more flags (`--tls-cert`, `--tls-key`).
pub fn mock_provider_with(name: &str, port: u16, extra: &[&str]) -> Proc {
    let dir = tmpdir(&format!("mock-{name}-{port}"));
    let listen = format!("127.0.0.1:{port}");
    let args = [
        &["mock-provider", "--listen", &listen, "--cores", "0"][..],
        extra,
    ]
    .concat();
    let p = spawn(&args, dir.join("mock.log"));
    wait_port(port, Duration::from_secs(10));
    p
}

/// A finished command's stdout and stderr, as one text for assertions.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn wait_port(port: u16, timeout: Duration) {
    wait_listening(port, true, timeout);
}

/// Waits until nothing listens on `port`. A killed glommio process can keep its listening
/// socket for a moment: io_uring tears a ring down asynchronously, after the process exits.
pub fn wait_port_closed(port: u16, timeout: Duration) {
    wait_listening(port, false, timeout);
}

fn wait_listening(port: u16, listening: bool, timeout: Duration) {
    if !reaches(port, listening, timeout) {
        panic!("port {port}: still not listening={listening}");
    }
}

/// Whether something listens on `port` within `timeout`.
pub fn listening_within(port: u16, timeout: Duration) -> bool {
    reaches(port, true, timeout)
}

fn reaches(port: u16, listening: bool, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() == listening {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A running gateway with its ports.
pub struct Gateway {
    pub proc: Proc,
    pub port: u16,
    pub admin: u16,
    pub dir: PathBuf,
}

/// Starts `coregate serve` with `extra_toml` appended to a config that sets the ports
/// and a 100 ms stats interval.
pub fn gateway(name: &str, cores: &str, extra_toml: &str) -> Gateway {
    gateway_with_server(name, cores, "", extra_toml)
}

/// [`gateway`] with more keys in its `[server]` table (`tls_listen = ...`).
pub fn gateway_with_server(
    name: &str,
    cores: &str,
    server_toml: &str,
    extra_toml: &str,
) -> Gateway {
    let dir = tmpdir(name);
    let port = free_port();
    let admin = free_port();
    let mock = free_port();
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ncores = \"{cores}\"\ndrain_timeout_ms = 5000\n\
         {server_toml}\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n[stats]\ninterval_ms = 100\n\
         [mock]\nlisten = \"127.0.0.1:{mock}\"\n{extra_toml}\n"
    );
    gateway_from_config(dir, port, admin, &cfg)
}

/// Starts `coregate serve` with `cfg` written to `dir/coregate.toml`; waits for its data
/// and admin ports.
pub fn gateway_from_config(dir: PathBuf, port: u16, admin: u16, cfg: &str) -> Gateway {
    let path = dir.join("coregate.toml");
    std::fs::write(&path, cfg).expect("write config");
    let mut proc = spawn(
        &["serve", "--config", path.to_str().expect("path")],
        dir.join("gateway.log"),
    );
    for p in [port, admin] {
        if !listening_within(p, Duration::from_secs(15)) {
            let exited = proc.wait_exit(Duration::ZERO);
            panic!(
                "gateway port {p} not listening (exit {exited:?}); its log:\n{}",
                proc.log_text()
            );
        }
    }
    Gateway {
        proc,
        port,
        admin,
        dir,
    }
}

impl Gateway {
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect gateway");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    }

    pub fn stats(&self) -> serde_json::Value {
        let body = admin_get(self.admin, "/stats");
        serde_json::from_str(&body).expect("stats json")
    }

    /// Polls /stats until `pred` holds (stats ship every 100 ms).
    pub fn stats_until(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let s = self.stats();
            if pred(&s) || Instant::now() > end {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn admin_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("admin");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_string(),
        None => text,
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

/// Reads responses from a stream, keeping leftover bytes between calls.
pub struct Reader {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    pub fn new(stream: TcpStream) -> Reader {
        Reader {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, data: &[u8]) {
        self.stream.write_all(data).expect("send");
    }

    fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 65536];
        match self.stream.read(&mut tmp) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Some(l);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill() {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// Reads one response; `head_request` for responses to HEAD.
    pub fn response(&mut self, head_request: bool) -> Option<Response> {
        let status_line = self.line()?;
        let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
        let mut headers = Vec::new();
        loop {
            let l = self.line()?;
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':')?;
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if head_request || status < 200 || status == 204 || status == 304 {
            return Some(resp);
        }
        if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let size_line = self.line()?;
                let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
                if size == 0 {
                    while !self.line()?.is_empty() {}
                    break;
                }
                let data = self.exact(size)?;
                resp.body.extend_from_slice(&data);
                self.exact(2)?;
            }
        } else if let Some(n) = resp
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            resp.body = self.exact(n)?;
        } else {
            while self.fill() {}
            resp.body = std::mem::take(&mut self.buf);
        }
        Some(resp)
    }

    /// Whether the peer closed the connection (EOF or reset) within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let _ = self.stream.set_read_timeout(Some(timeout));
        let mut tmp = [0u8; 4096];
        let end = Instant::now() + timeout;
        loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    if Instant::now() >= end {
                        return false;
                    }
                }
                Err(_) => return true,
            }
        }
    }
}

/// Sends one request on a fresh connection and reads one response.
pub fn request(port: u16, raw: &str) -> Response {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut r = Reader::new(s);
    r.send(raw.as_bytes());
    r.response(raw.starts_with("HEAD ")).expect("response")
}

/// A WebSocket handshake for `path` (RFC 6455 §1.3's example key), with `extra` header
/// lines (each ending in CRLF).
pub fn ws_handshake(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Sends a masked text frame `hi` on an open tunnel to the mock's `/ws` and reads its echo.
pub fn ws_echo(r: &mut Reader) {
    r.send(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
    let mut got = [0u8; 4];
    r.stream.read_exact(&mut got).expect("echo");
    assert_eq!(got, [0x81, 2, b'h', b'i']);
}
