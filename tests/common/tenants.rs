//! The tenants' gateway of tests/tenants.rs and tests/budgets.rs: two tenants, an admin
//! token, a usage export and an access log over one mock provider.

use super::*;
use std::path::Path;
use std::time::Duration;

/// A key file holding `key`, for `keys = ["file:..."]`.
pub fn key_file(dir: &Path, name: &str, key: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{key}\n")).unwrap();
    format!("file:{}", path.display())
}

/// Two tenants over a mock provider: `acme` (every route) and `lim` (only `/v1/mock/`, with
/// `limits`), routes `/other/` and `/v1/mock/` to the same mock (in this order, which is
/// not the route table's: longest prefix first), and an admin token.
pub fn tenants_gateway(name: &str, cores: &str, limits: &str) -> (Gateway, Proc) {
    let dir = tmpdir(name);
    let acme = key_file(&dir, "acme.key", "sk-acme-1");
    let lim = key_file(&dir, "lim.key", "sk-lim-1");
    let admin_key = key_file(&dir, "admin.key", "admin-secret");
    let (port, admin, mock) = (free_port(), free_port(), free_port());
    let export = dir.join("usage.jsonl").display().to_string();
    let access = dir.join("access.jsonl").display().to_string();
    let mock_proc = mock_provider(name, mock);
    wait_port(mock, Duration::from_secs(10));
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ncores = \"{cores}\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{admin_key}\"\n\
         [stats]\ninterval_ms = 100\n[auth]\nmode = \"keys\"\n\
         [usage]\nexport = \"{export}\"\n[access_log]\npath = \"{access}\"\n\
         [[providers]]\nname = \"mock\"\nendpoints = [\"127.0.0.1:{mock}\"]\n\
         [[routes]]\nprefix = \"/other/\"\nprovider = \"mock\"\nrewrite = \"/\"\n\
         [[routes]]\nprefix = \"/v1/mock/\"\nprovider = \"mock\"\nrewrite = \"/\"\n\
         [[tenants]]\nname = \"acme\"\nkeys = [\"{acme}\"]\n\
         [[tenants]]\nname = \"lim\"\nkeys = [\"{lim}\"]\nroutes = [\"/v1/mock/\"]\n{limits}\n"
    );
    (gateway_from_config(dir, port, admin, &cfg), mock_proc)
}

/// An admin document with the admin token.
pub fn admin_json(gw: &Gateway, path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.admin)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer admin-secret\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out}"))
}

pub fn stats(gw: &Gateway) -> serde_json::Value {
    admin_json(gw, "/stats")
}

pub fn get(port: u16, path: &str, headers: &str) -> Response {
    request(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n"),
    )
}
