//! A tenant's rate shared by two gateway processes through a real Redis: the combined
//! admitted rate holds the limit; with Redis killed or hung (SIGSTOP) while both are
//! driven, requests keep flowing on local limits (no request waits for Redis), the fallback
//! shows in /stats, /metrics and the log, and the shared limit comes back with Redis. Both
//! nodes' usage adds up in Redis for a fleet-wide view.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// A redis-server on `port` with `extra` arguments, persisting nothing; its log in `dir`.
fn redis(port: u16, dir: &std::path::Path, extra: &[&str]) -> Proc {
    let port_arg = port.to_string();
    let mut args = vec![
        "--port",
        &port_arg,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ];
    args.extend_from_slice(extra);
    let proc = spawn_command(
        Command::new("redis-server").args(args),
        dir.join(format!("redis-{port}.log")),
    );
    wait_port(port, Duration::from_secs(10));
    proc
}

/// What a shared-limits test runs against: a Redis (killed when dropped, a panic included:
/// SIGKILL ends a stopped one too) and a mock provider, on ports of their own.
struct Bed {
    dir: std::path::PathBuf,
    rport: u16,
    mport: u16,
    redis: Proc,
    _mock: Proc,
}

/// The test bed `name`, or `None` (the test passes, saying so) when `tools` are missing.
fn bed(name: &str, tools: &[&str]) -> Option<Bed> {
    if !tools.iter().all(|t| require_tool(t)) {
        return None;
    }
    let dir = tmpdir(name);
    let (rport, mport) = (free_port(), free_port());
    let redis = redis(rport, &dir, &[]);
    let _mock = mock_provider(name, mport);
    wait_port(mport, Duration::from_secs(10));
    Some(Bed {
        dir,
        rport,
        mport,
        redis,
        _mock,
    })
}

/// A gateway on one shard whose tenant `t` (key `sk-t`) has `rate`/s shared through Redis.
fn gateway_on(name: &str, redis_port: u16, mock: u16, rate: u32, burst: u32) -> Gateway {
    let limits = format!("redis = \"127.0.0.1:{redis_port}\"\n");
    gateway_with_limits(name, &limits, mock, rate, burst)
}

/// [`gateway_on`] with `limits` (the `[limits]` keys but `backend`) as given.
fn gateway_with_limits(name: &str, limits: &str, mock: u16, rate: u32, burst: u32) -> Gateway {
    let dir = tmpdir(name);
    let key = dir.join("t.key");
    std::fs::write(&key, "sk-t\n").unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ncores = \"0\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n[stats]\ninterval_ms = 100\n\
         [auth]\nmode = \"keys\"\n[limits]\nbackend = \"redis\"\n{limits}\
         [[providers]]\nname = \"m\"\nendpoints = [\"127.0.0.1:{mock}\"]\n\
         [[routes]]\nprefix = \"/m/\"\nprovider = \"m\"\nrewrite = \"/\"\n\
         [[tenants]]\nname = \"t\"\nkeys = [\"file:{}\"]\nrate_per_s = {rate}\nburst = {burst}\n",
        key.display()
    );
    gateway_from_config(dir, port, admin, &cfg)
}

/// One keep-alive connection asking as fast as it can for `secs`: (admitted, slowest answer).
fn drive(port: u16, secs: f64) -> (u64, Duration) {
    let mut r = Reader::new(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
    let (mut ok, mut slowest) = (0u64, Duration::ZERO);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        let sent = Instant::now();
        r.send(b"GET /m/bytes?size=1 HTTP/1.1\r\nHost: t\r\nx-api-key: sk-t\r\n\r\n");
        let status = r.response(false).unwrap().status;
        slowest = slowest.max(sent.elapsed());
        ok += u64::from(status == 200);
        assert!(status == 200 || status == 429, "status {status}");
    }
    (ok, slowest)
}

fn fallback_shards(gw: &Gateway) -> serde_json::Value {
    gw.stats()["total"]["shared_limits"]["fallback_shards"].clone()
}

/// `redis-cli -p PORT ARGS...`'s output, trimmed.
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Tenant `t`'s fleet-wide request total for today in Redis.
fn fleet_requests(port: u16) -> u64 {
    let key = cli(port, &["--scan", "--pattern", "coregate:usage:t:*"]);
    cli(port, &["HGET", &key, "requests"]).parse().unwrap_or(0)
}

/// The value of the one-shard gateway's `/metrics` sample `name`.
fn metric(gw: &Gateway, name: &str) -> u64 {
    let text = admin_get(gw.admin, "/metrics");
    let prefix = format!("{name}{{shard=\"0\",core=\"0\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Drives both gateways flat out for `secs`, doing `meanwhile` after `after` secs:
/// (admitted by both, the slowest answer either saw).
fn drive_both(
    a: &Gateway,
    b: &Gateway,
    secs: f64,
    after: f64,
    meanwhile: impl FnOnce(),
) -> (u64, Duration) {
    let (pa, pb) = (a.port, b.port);
    let ta = std::thread::spawn(move || drive(pa, secs));
    let tb = std::thread::spawn(move || drive(pb, secs));
    std::thread::sleep(Duration::from_secs_f64(after));
    meanwhile();
    let (x, y) = (ta.join().unwrap(), tb.join().unwrap());
    (x.0 + y.0, x.1.max(y.1))
}

/// The combined admitted rate of both gateways over `secs` holds the limit within ±10 %.
fn assert_shared_rate(
    a: &Gateway,
    b: &Gateway,
    rate: u32,
    burst: u32,
    secs: f64,
    when: &str,
) -> u64 {
    let (admitted, _) = drive_both(a, b, secs, 0.0, || {});
    let expected = f64::from(rate) * secs + f64::from(burst);
    let error = (admitted as f64 - expected).abs() / expected;
    eprintln!("{when}: admitted {admitted} by both, expected {expected}");
    assert!(
        error <= 0.10,
        "{when}: admitted {admitted} by both, expected {expected} ({error:.3})"
    );
    admitted
}

/// Drives `gw` lightly until its shard is back on Redis leases.
fn wait_for_leases(gw: &Gateway) {
    let end = Instant::now() + Duration::from_secs(10);
    while fallback_shards(gw) != 0 {
        assert!(Instant::now() < end, "never went back to Redis");
        drive(gw.port, 0.2);
    }
}

/// No request waited for Redis: every answer under the 250 ms Redis timeout, which a request
/// that waited on Redis would take at least (the rest is room for a loaded CI machine).
const NO_STALL: Duration = Duration::from_millis(250);

#[test]
fn two_gateways_share_a_tenant_rate_through_redis_and_survive_its_loss() {
    let Some(Bed {
        dir,
        rport,
        mport,
        redis: redis_proc,
        _mock,
    }) = bed("shared-limits", &["redis-server"])
    else {
        return;
    };
    let (rate, burst, secs) = (50u32, 10u32, 4.0);
    let a = gateway_on("shared-limits-a", rport, mport, rate, burst);
    let b = gateway_on("shared-limits-b", rport, mport, rate, burst);
    let admitted = assert_shared_rate(&a, &b, rate, burst, secs, "Redis up");
    assert_eq!(fallback_shards(&a), 0);
    assert_eq!(metric(&a, "coregate_limits_redis_failures_total"), 0);

    // Both nodes add their usage to the fleet totals in Redis: every admitted request.
    if require_tool("redis-cli") {
        let end = Instant::now() + Duration::from_secs(5);
        let total = loop {
            let n = fleet_requests(rport);
            if n >= admitted || Instant::now() > end {
                break n;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(total, admitted, "fleet total in Redis");
    }

    // Redis dies while both nodes are driven: requests go on, answered at once, on each
    // node's own limit.
    let (during, slowest) = drive_both(&a, &b, 2.5, 0.8, || {
        redis_proc.signal(libc::SIGKILL);
    });
    drop(redis_proc);
    assert!(during > 0, "nothing admitted while Redis was down");
    assert!(
        slowest < NO_STALL,
        "a request waited {slowest:?} (Redis killed)"
    );
    for gw in [&a, &b] {
        let s = gw.stats_until(|s| s["total"]["shared_limits"]["fallback_shards"] == 1);
        assert_eq!(
            s["total"]["shared_limits"]["fallback_shards"], 1,
            "{}",
            s["total"]
        );
        assert_eq!(metric(gw, "coregate_limits_fallback"), 1);
        assert!(metric(gw, "coregate_limits_redis_failures_total") >= 1);
        let log = gw.proc.log_text();
        assert!(
            log.contains("limits: Redis at") && log.contains("unreachable"),
            "{log}"
        );
    }

    // Redis is back on the same port: leases resume, and the shared limit holds again.
    let redis_proc = redis(rport, &dir, &[]);
    wait_for_leases(&a);
    wait_for_leases(&b);
    assert!(a.proc.log_text().contains("Redis answers again"));
    assert_eq!(metric(&a, "coregate_limits_fallback"), 0);

    // Redis hangs (SIGSTOP: connections open, nothing answers) mid-drive, then resumes.
    let failures_before = metric(&a, "coregate_limits_redis_failures_total");
    let (during, slowest) = drive_both(&a, &b, 2.5, 0.8, || {
        redis_proc.signal(libc::SIGSTOP);
    });
    assert!(during > 0, "nothing admitted while Redis hung");
    assert!(
        slowest < NO_STALL,
        "a request waited {slowest:?} (Redis hung)"
    );
    let s = a.stats_until(|s| s["total"]["shared_limits"]["fallback_shards"] == 1);
    assert_eq!(
        s["total"]["shared_limits"]["fallback_shards"], 1,
        "{}",
        s["total"]
    );
    assert!(metric(&a, "coregate_limits_redis_failures_total") > failures_before);
    redis_proc.signal(libc::SIGCONT);
    wait_for_leases(&a);
    wait_for_leases(&b);
    assert_shared_rate(&a, &b, rate, burst, secs, "after Redis hung and resumed");

    // A reload starts new leases; the failure counter, a Prometheus counter, goes on.
    let failures = metric(&a, "coregate_limits_redis_failures_total");
    a.proc.signal(libc::SIGHUP);
    let s = a.stats_until(|s| {
        s["shards"]
            .as_array()
            .is_some_and(|v| v.iter().all(|sh| sh["config_generation"] == 2))
    });
    assert!(s["shards"][0]["config_generation"] == 2, "{}", s["shards"]);
    drive(a.port, 0.3);
    assert!(metric(&a, "coregate_limits_redis_failures_total") >= failures);
}

/// `INFO commandstats`' call count of `command` (`evalsha`, `eval`), 0 when never called.
fn redis_calls(port: u16, command: &str) -> u64 {
    let info = cli(port, &["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The lease calls Redis has seen: (`EVALSHA`, `EVAL`), less the fleet writer's `EVAL`s
/// (one per applied batch, each leaving a `coregate:batch:*` key).
fn lease_calls(port: u16) -> (u64, u64) {
    let (sha, eval) = (redis_calls(port, "evalsha"), redis_calls(port, "eval"));
    let batches = cli(port, &["--scan", "--pattern", "coregate:batch:*"]);
    (sha, eval.saturating_sub(batches.lines().count() as u64))
}

/// One request of tenant `t` on a new connection: its status.
fn one_request(port: u16) -> u16 {
    request(
        port,
        "GET /m/bytes?size=1 HTTP/1.1\r\nHost: t\r\nx-api-key: sk-t\r\nConnection: close\r\n\r\n",
    )
    .status
}

#[test]
fn leases_start_without_refusing_and_a_dry_bucket_costs_one_call_per_batch() {
    let Some(b) = bed("shared-leases", &["redis-server", "redis-cli"]) else {
        return;
    };
    let (rport, mport) = (b.rport, b.mport);
    let (rate, secs) = (50u32, 2.0);
    let gw = gateway_on("shared-leases-gw", rport, mport, rate, 10);

    // The tenant's first request starts the shard's first lease and is decided locally
    // meanwhile, not refused.
    assert_eq!(one_request(gw.port), 200);

    // Flat out, far over the limit: the shared bucket is dry most of the time, and a short
    // grant holds the next lease back until the bucket would have refilled a batch, so
    // Redis sees about one call per batch period (batch: 50 ms of the rate, 3 tokens),
    // not one per request.
    let before = lease_calls(rport);
    let (admitted, _) = drive(gw.port, secs);
    let after = lease_calls(rport);
    let calls = (after.0 + after.1).saturating_sub(before.0 + before.1);
    let per_batch = f64::from(rate) * secs / 3.0;
    eprintln!("{admitted} admitted with {calls} lease calls ({per_batch} batch periods)");
    assert!(calls > 0, "no lease call reached Redis");
    assert!(
        (calls as f64) <= 1.5 * per_batch + 10.0,
        "{calls} lease calls for {per_batch} batch periods"
    );
    // The script goes by its digest: sent whole once (NOSCRIPT on a fresh Redis).
    assert!(after.1 <= 1, "{}", cli(rport, &["INFO", "commandstats"]));
    assert!(after.0 - before.0 >= calls - 1);

    // A reload starts the leases over; the first request is again decided locally.
    std::thread::sleep(Duration::from_millis(1100));
    gw.proc.signal(libc::SIGHUP);
    let s = gw.stats_until(|s| {
        s["config"]["reloads_applied"] == 1 && s["config"]["applied_by_all_shards"] == true
    });
    assert_eq!(s["config"]["reloads_applied"], 1, "{}", s["config"]);
    assert_eq!(one_request(gw.port), 200);
}

#[test]
fn redis_by_dns_name_with_a_password_from_a_file() {
    if !require_tool("redis-server") || !require_tool("redis-cli") {
        return;
    }
    let dir = tmpdir("shared-auth");
    let (rport, mport) = (free_port(), free_port());
    let password = "s3cret-redis-pw";
    let _redis = redis(rport, &dir, &["--requirepass", password]);
    let _mock = mock_provider("shared-auth", mport);
    wait_port(mport, Duration::from_secs(10));
    let pw_file = dir.join("redis.pw");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    // `localhost` goes through the resolver (getaddrinfo), as any DNS name would.
    let limits = format!(
        "redis = \"localhost:{rport}\"\nredis_password = \"file:{}\"\n",
        pw_file.display()
    );
    let gw = gateway_with_limits("shared-auth-gw", &limits, mport, 50, 10);
    let (admitted, _) = drive(gw.port, 1.0);
    assert!(admitted > 0);
    assert_eq!(fallback_shards(&gw), 0, "{}", gw.proc.log_text());
    assert_eq!(metric(&gw, "coregate_limits_redis_failures_total"), 0);
    let authed = |args: &[&str]| {
        cli(
            rport,
            &[&["-a", password, "--no-auth-warning"], args].concat(),
        )
    };
    let info = authed(&["INFO", "commandstats"]);
    assert!(info.contains("cmdstat_evalsha:calls="), "{info}");
    // The fleet writer authenticates too: the tenant's totals arrive.
    let end = Instant::now() + Duration::from_secs(5);
    while authed(&["--scan", "--pattern", "coregate:usage:t:*"]).is_empty() {
        assert!(
            Instant::now() < end,
            "no fleet totals: {}",
            gw.proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!gw.proc.log_text().contains(password));

    // `check` shows where the password comes from, never the password.
    let cfg = gw.dir.join("coregate.toml");
    let out = Command::new(BIN)
        .args(["check", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("redis_password = \"<redacted: file:"),
        "{text}"
    );
    assert!(!text.contains(password), "{text}");

    // A name that does not resolve is a config error naming the file and the key.
    let bad = dir.join("bad.toml");
    let body = std::fs::read_to_string(&cfg).unwrap();
    let body = body.replace(&format!("localhost:{rport}"), "no-such-host.invalid:6379");
    std::fs::write(&bad, body).unwrap();
    let out = Command::new(BIN)
        .args(["check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!("{}: limits.redis:", bad.display())),
        "{text}"
    );
    assert!(text.contains("does not resolve"), "{text}");
}

/// `n` requests of tenant `t`, one every `gap`: how many were admitted.
fn paced(port: u16, n: usize, gap: Duration) -> u64 {
    let mut ok = 0;
    for _ in 0..n {
        ok += u64::from(one_request(port) == 200);
        std::thread::sleep(gap);
    }
    ok
}

#[test]
fn a_fleet_batch_retried_after_a_lost_answer_counts_once() {
    let Some(b) = bed("shared-fleet", &["redis-server", "redis-cli"]) else {
        return;
    };
    let (rport, mport, redis_proc) = (b.rport, b.mport, &b.redis);
    let gw = gateway_on("shared-fleet-gw", rport, mport, 1000, 1000);
    let settled = |want: u64| {
        let end = Instant::now() + Duration::from_secs(5);
        while fleet_requests(rport) < want && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        fleet_requests(rport)
    };
    let before = paced(gw.port, 10, Duration::from_millis(10));
    assert_eq!(settled(before), before);

    // Redis hangs past the writer's 250 ms timeout while requests go on: every interval's
    // attempt is written into a socket Redis will read once it resumes, and times out.
    redis_proc.signal(libc::SIGSTOP);
    let during = paced(gw.port, 20, Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(600));
    redis_proc.signal(libc::SIGCONT);
    let total = before + during;
    assert_eq!(settled(total), total);
    // Every lost attempt has been read by now; nothing counted twice.
    std::thread::sleep(Duration::from_millis(1000));
    let key = cli(rport, &["--scan", "--pattern", "coregate:usage:t:*"]);
    assert_eq!(
        fleet_requests(rport),
        total,
        "{}",
        cli(rport, &["HGETALL", &key])
    );
    assert!(gw.proc.log_text().contains("cannot add the fleet totals"));
}
