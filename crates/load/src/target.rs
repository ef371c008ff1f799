//! What the load generator sends: target URLs and the request bytes built from them once,
//! before the run, so a virtual user only copies a prepared buffer per request.

use std::net::{SocketAddr, ToSocketAddrs};

/// One `http://host:port/path` or `ws://host:port/path` target, resolved once at start.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    /// The Host header value (the URL's authority).
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path: String,
    /// `ws://`: its VUs open WebSocket sessions and exchange messages.
    pub websocket: bool,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let (rest, websocket) = match url.split_once("://") {
            Some(("http", rest)) => (rest, false),
            Some(("ws", rest)) => (rest, true),
            Some((scheme, _)) => {
                return Err(format!(
                    "{url}: scheme {scheme:?} is not supported (plain http:// or ws:// only)"
                ))
            }
            // A bare `host:port` is refused rather than guessed at: a stray argument (a PID
            // from `$(pgrep ...)`) would otherwise become a target on port 80.
            None => {
                return Err(format!(
                    "{url:?} is not a URL: write http://host:port/path or ws://host:port/path"
                ))
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url}: expected http://host[:port]/path"));
        }
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!("{url}: the path contains spaces or control bytes"));
        }
        let has_port = if authority.starts_with('[') {
            authority.contains("]:")
        } else {
            authority.contains(':')
        };
        let with_port = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("{url}: cannot resolve {authority}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: {authority} has no address"))?;
        Ok(Target {
            url: url.to_string(),
            addr,
            authority: authority.to_string(),
            path: path.to_string(),
            websocket,
        })
    }
}

/// Method, headers and body shared by every target.
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    pub method: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl RequestTemplate {
    pub fn new(
        method: Option<&str>,
        headers: &[String],
        body: Option<Vec<u8>>,
    ) -> Result<RequestTemplate, String> {
        let method = method
            .map(str::to_string)
            .unwrap_or_else(|| if body.is_some() { "POST" } else { "GET" }.into());
        if !is_token(&method) {
            return Err(format!("--method: {method:?} is not a method token"));
        }
        let mut parsed = Vec::new();
        for h in headers {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| format!("--header {h:?}: expected `Name: value`"))?;
            let value = value.trim();
            if !is_token(name) || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(format!("--header {h:?}: invalid name or value"));
            }
            let lower = name.to_ascii_lowercase();
            if lower == "content-length" || lower == "transfer-encoding" {
                return Err(format!(
                    "--header {h:?}: the body's framing is set by coregate load"
                ));
            }
            parsed.push((name.to_string(), value.to_string()));
        }
        Ok(RequestTemplate {
            method,
            headers: parsed,
            body,
        })
    }

    /// A HEAD request's response has no body whatever its headers say.
    pub fn is_head(&self) -> bool {
        self.method.eq_ignore_ascii_case("HEAD")
    }

    /// The complete request for `target`: head and body in one buffer. For a `ws://`
    /// target, the opening handshake (always a GET) without its `Sec-WebSocket-Key` and
    /// final CRLF, which each connection adds with a key of its own; the body becomes each
    /// message's payload ([`RequestTemplate::ws_plan`]).
    pub fn build(&self, target: &Target) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let method = if target.websocket {
            "GET"
        } else {
            &self.method
        };
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if target.websocket {
            out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n");
            out.extend_from_slice(b"Sec-WebSocket-Version: 13\r\n");
        }
        if !self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("host"))
        {
            out.extend_from_slice(b"Host: ");
            out.extend_from_slice(target.authority.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        match &self.body {
            _ if target.websocket => {}
            Some(body) => {
                out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
            }
            None => out.extend_from_slice(b"\r\n"),
        }
        out
    }

    /// What a `ws://` target's VUs send after the handshake: the body (`--body`,
    /// `--body-file`) as each message's payload, else 640 bytes (20 ms of 16 kHz audio).
    pub fn ws_plan(&self, target: &Target) -> Option<super::ws::WsPlan> {
        if !target.websocket {
            return None;
        }
        let payload = self.body.clone().unwrap_or_else(|| {
            (0..super::ws::DEFAULT_PAYLOAD)
                .map(|i| (i % 251) as u8)
                .collect()
        });
        Some(super::ws::WsPlan { payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:8080/v1/x?a=1").unwrap();
        assert_eq!(t.addr.port(), 8080);
        assert_eq!(t.path, "/v1/x?a=1");
        assert_eq!(t.authority, "127.0.0.1:8080");
        let t = Target::parse("http://127.0.0.1:9").unwrap();
        assert_eq!(t.path, "/");
        assert_eq!(Target::parse("http://127.0.0.1/").unwrap().addr.port(), 80);
        assert!(Target::parse("https://x/").unwrap_err().contains("https"));
        assert!(Target::parse("wss://x/").unwrap_err().contains("wss"));
        assert!(!Target::parse("http://127.0.0.1:1/").unwrap().websocket);
        assert!(Target::parse("ws://127.0.0.1:1/").unwrap().websocket);
        assert!(Target::parse("http:///x").is_err());
        assert!(Target::parse("127.0.0.1:8080/x")
            .unwrap_err()
            .contains("not a URL"));
        assert!(Target::parse("4242").is_err());
    }

    #[test]
    fn request_bytes() {
        let t = Target::parse("http://127.0.0.1:1/p").unwrap();
        let r = RequestTemplate::new(None, &["X-A: 1".into()], Some(b"hi".to_vec())).unwrap();
        assert_eq!(
            String::from_utf8(r.build(&t)).unwrap(),
            "POST /p HTTP/1.1\r\nHost: 127.0.0.1:1\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nhi"
        );
        assert!(RequestTemplate::new(None, &["Bad Header: x".into()], None).is_err());
        // ws://: a GET handshake (each connection adds its key and the final CRLF); the
        // body is the messages' payload.
        let ws = Target::parse("ws://127.0.0.1:1/ws").unwrap();
        let text = String::from_utf8(r.build(&ws)).unwrap();
        assert_eq!(
            text,
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nHost: 127.0.0.1:1\r\nX-A: 1\r\n"
        );
        assert_eq!(r.ws_plan(&ws).expect("plan").payload, b"hi");
        assert!(r.ws_plan(&t).is_none());
        assert!(RequestTemplate::new(None, &["Content-Length: 1".into()], None).is_err());
        assert!(RequestTemplate::new(Some("GE T"), &[], None).is_err());
    }
}
