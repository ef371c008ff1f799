//! A tenant's rate shared by two gateway processes through a real Redis: the combined
//! admitted rate holds the limit; with Redis killed, requests keep flowing on local limits
//! (no stall), the fallback shows, and the shared limit comes back with Redis. Both nodes'
//! usage adds up in Redis for a fleet-wide view.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn redis(port: u16, dir: &std::path::Path) -> Proc {
    let proc = spawn_command(
        Command::new("redis-server").args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]),
        dir.join(format!("redis-{port}.log")),
    );
    wait_port(port, Duration::from_secs(10));
    proc
}

/// A gateway on one shard whose tenant `t` (key `sk-t`) has `rate`/s shared through Redis.
fn gateway_on(name: &str, redis_port: u16, mock: u16, rate: u32, burst: u32) -> Gateway {
    let dir = tmpdir(name);
    let key = dir.join("t.key");
    std::fs::write(&key, "sk-t\n").unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ncores = \"0\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n[stats]\ninterval_ms = 100\n\
         [auth]\nmode = \"keys\"\n[limits]\nbackend = \"redis\"\nredis = \"127.0.0.1:{redis_port}\"\n\
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

#[test]
fn two_gateways_share_a_tenant_rate_through_redis_and_survive_its_loss() {
    if !require_tool("redis-server") {
        return;
    }
    let dir = tmpdir("shared-limits");
    let (rport, mport) = (free_port(), free_port());
    let mut redis_proc = redis(rport, &dir);
    let _mock = mock_provider("shared-limits", mport);
    wait_port(mport, Duration::from_secs(10));
    let (rate, burst, secs) = (50u32, 10u32, 4.0);
    let a = gateway_on("shared-limits-a", rport, mport, rate, burst);
    let b = gateway_on("shared-limits-b", rport, mport, rate, burst);

    let (pa, pb) = (a.port, b.port);
    let ta = std::thread::spawn(move || drive(pa, secs));
    let tb = std::thread::spawn(move || drive(pb, secs));
    let (admitted, _) = {
        let (x, y) = (ta.join().unwrap(), tb.join().unwrap());
        (x.0 + y.0, x.1.max(y.1))
    };
    let expected = f64::from(rate) * secs + f64::from(burst);
    let error = (admitted as f64 - expected).abs() / expected;
    assert!(
        error <= 0.10,
        "admitted {admitted} by both, expected {expected} ({error:.3})"
    );
    assert_eq!(fallback_shards(&a), 0);

    // Both nodes add their usage to the fleet totals in Redis: every admitted request.
    if require_tool("redis-cli") {
        let cli = |args: &[&str]| {
            let out = Command::new("redis-cli")
                .args(["-p", &rport.to_string()])
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let end = Instant::now() + Duration::from_secs(5);
        let total = loop {
            let key = cli(&["--scan", "--pattern", "coregate:usage:t:*"]);
            let n: u64 = cli(&["HGET", &key, "requests"]).parse().unwrap_or(0);
            if n >= admitted || Instant::now() > end {
                break n;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(total, admitted, "fleet total in Redis");
    }

    // Redis dies: requests go on, answered at once, on each node's own limit.
    redis_proc.signal(libc::SIGKILL);
    let _ = redis_proc.wait_exit(Duration::from_secs(5));
    let (during, slowest) = drive(pa, 1.5);
    assert!(during > 0, "nothing admitted while Redis was down");
    assert!(
        slowest < Duration::from_millis(500),
        "a request waited {slowest:?}"
    );
    let s = a.stats_until(|s| s["total"]["shared_limits"]["fallback_shards"] == 1);
    assert_eq!(
        s["total"]["shared_limits"]["fallback_shards"], 1,
        "{}",
        s["total"]
    );
    assert!(
        a.proc.log_text().contains("unreachable"),
        "{}",
        a.proc.log_text()
    );

    // Redis is back on the same port: leases resume.
    let _redis_again = redis(rport, &dir);
    let end = Instant::now() + Duration::from_secs(10);
    while fallback_shards(&a) != 0 {
        assert!(Instant::now() < end, "never went back to Redis");
        drive(pa, 0.2);
    }
    assert!(a.proc.log_text().contains("Redis answers again"));
    let metrics = admin_get(a.admin, "/metrics");
    assert!(
        metrics.contains("coregate_limits_fallback{shard=\"0\",core=\"0\"} 0"),
        "{metrics}"
    );
}
