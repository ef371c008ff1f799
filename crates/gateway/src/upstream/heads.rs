//! The heads the gateway writes on a request's way through: the request head for the
//! provider and the response (interim, final or 101) head for the client.
//!
//! Hop-by-hop fields (and those named in `Connection`) are removed both ways, `Via` and
//! `X-Forwarded-*` are set, framing is rebuilt for the client's HTTP version, and a response
//! without `Date` gets one (RFC 9110 §7.6, §6.6.1; RFC 9112 §6).

use super::providers::Provider;
use crate::request_id::RequestId;
use crate::route::Route;
use crate::tenants::{Carrier, WS_KEY_PREFIX};
use coregate_http1::reply::Persist;
use coregate_http1::request::{check_dot_segments, HeaderRange, RequestHead, Version};
use coregate_http1::response::ResponseHead;
use coregate_http1::HttpError;
use coregate_http1::{field_elements, Framing};

/// Hop-by-hop fields (RFC 9110 §7.6.1) plus the ones the gateway rewrites itself.
fn is_hop_by_hop(name: &[u8]) -> bool {
    // HTTP2-Settings belongs to an h2c upgrade (RFC 7540 §3.2.1: connection-specific),
    // which the gateway never tunnels.
    const HOP: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"http2-settings",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || (name.len() > 6 && name[..6].eq_ignore_ascii_case(b"proxy-"))
}

/// Field names listed in Connection, which are hop-by-hop for this message.
fn connection_listed<'a>(buf: &'a [u8], headers: &'a [HeaderRange]) -> Vec<&'a [u8]> {
    field_elements(buf, headers, b"connection").collect()
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The protocols of the client's `Upgrade` field(s) that the route allows, in the client's
/// order. Empty when the request is no upgrade or offers nothing allowed: it then goes on as
/// an ordinary request, without `Upgrade`.
pub(super) fn offered_upgrades(
    buf: &[u8],
    head: &RequestHead,
    headers: &[HeaderRange],
    route: &Route,
) -> Vec<Vec<u8>> {
    if !head.upgrade {
        return Vec::new();
    }
    field_elements(buf, headers, b"upgrade")
        .filter(|p| route.allows_upgrade(p))
        .map(<[u8]>::to_vec)
        .collect()
}

/// Whether a 101's `Upgrade` names only protocols the request offered (RFC 9110 §15.2.2:
/// a server switches to one the client listed); a 101 without `Upgrade` is refused too.
fn switched_to_offered(buf: &[u8], headers: &[HeaderRange], offered: &[Vec<u8>]) -> bool {
    let mut named = false;
    let all_offered = field_elements(buf, headers, b"upgrade").all(|p| {
        named = true;
        offered.iter().any(|o| o.eq_ignore_ascii_case(p))
    });
    named && all_offered
}

/// Builds the request head sent to the provider; a 400 when the route's prefix rewrite
/// would send a dot-segment the client's path did not have. `upgrade` lists the protocols
/// forwarded in `Upgrade` (empty: none, and no `Connection: Upgrade`).
pub(super) fn request_head(
    buf: &[u8],
    head: &RequestHead,
    headers: &[HeaderRange],
    route: &Route,
    provider: &Provider,
    client: ClientFacts,
    upgrade: &[Vec<u8>],
) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::with_capacity(head.head_len + 128);
    out.extend_from_slice(head.method(buf));
    out.push(b' ');
    let path = head.path(buf);
    // A gateway key in the query is the gateway's, not the provider's.
    let unkeyed;
    let path = match client.key_carrier {
        Some(Carrier::Query) => {
            unkeyed = without_query_key(path);
            &unkeyed[..]
        }
        _ => path,
    };
    match &route.replace_prefix {
        Some(rep) => {
            let rest = path.get(route.prefix.len()..).unwrap_or(b"");
            let start = out.len();
            if !rep.starts_with(b"/") && !rest.starts_with(b"/") {
                out.push(b'/');
            }
            out.extend_from_slice(rep);
            out.extend_from_slice(rest);
            // The client's path had no dot-segment, but the rewrite may join one
            // (prefix `/stt`, rewrite `/v1/stt/`, path `/stt../admin`).
            check_dot_segments(&out[start..])?;
        }
        None if path.is_empty() => out.push(b'/'),
        None => out.extend_from_slice(path),
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    if let Some(h) = &provider.host_header {
        out.extend_from_slice(h);
    } else if !head.host.is_empty() {
        out.extend_from_slice(&buf[head.host.clone()]);
    } else if let Some(e) = provider.cfg.endpoints.first() {
        out.extend_from_slice(e.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    let listed = connection_listed(buf, headers);
    let mut xff: Vec<&[u8]> = Vec::new();
    let mut via: Vec<&[u8]> = Vec::new();
    let mut had_content_length = false;
    for h in headers {
        let name = &buf[h.name.clone()];
        let value = &buf[h.value.clone()];
        if name.eq_ignore_ascii_case(b"content-length") {
            had_content_length = true;
        }
        if is_hop_by_hop(name)
            || name.eq_ignore_ascii_case(b"host")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"x-forwarded-proto")
            // Replaced by the request's id (the same value when the client's was well formed).
            || name.eq_ignore_ascii_case(b"x-request-id")
            || listed.iter().any(|l| l.eq_ignore_ascii_case(name))
            || route
                .remove_headers
                .iter()
                .any(|r| r.eq_ignore_ascii_case(name))
            // The client's own credential for this provider never reaches it: the
            // gateway's replaces it.
            || provider
                .add_headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
            || provider
                .credential
                .as_ref()
                .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            continue;
        }
        if is_key_carrier(name, client.key_carrier) {
            if client.key_carrier == Some(Carrier::WebSocketProtocol) {
                push_protocols_without_key(&mut out, name, value);
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            xff.push(value);
        } else if name.eq_ignore_ascii_case(b"max-forwards") && head.method(buf) == b"OPTIONS" {
            push_max_forwards(&mut out, name, value);
        } else if name.eq_ignore_ascii_case(b"via") {
            via.push(value);
        } else {
            push_header(&mut out, name, value);
        }
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    for v in &xff {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    match client.peer {
        // Formats straight into the head; writing to a Vec cannot fail.
        Some(ip) => {
            let _ = std::io::Write::write_fmt(&mut out, format_args!("{ip}"));
        }
        None => out.extend_from_slice(b"unknown"),
    }
    out.extend_from_slice(if client.https {
        b"\r\nX-Forwarded-Proto: https\r\n"
    } else {
        b"\r\nX-Forwarded-Proto: http\r\n"
    });
    push_via(&mut out, &via, head.version != Version::Http10);
    if let Some(id) = &client.request_id {
        push_header(&mut out, b"X-Request-Id", id.as_bytes());
    }
    for (k, v) in route.add_headers.iter().chain(&provider.add_headers) {
        push_header(&mut out, k, v);
    }
    if let Some((name, value)) = &provider.credential {
        push_header(&mut out, name, value);
    }
    if !upgrade.is_empty() {
        out.extend_from_slice(b"Upgrade: ");
        for (i, p) in upgrade.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(p);
        }
        out.extend_from_slice(b"\r\nConnection: Upgrade\r\n");
    }
    match head.framing {
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::Length(n) if n > 0 || had_content_length => {
            out.extend_from_slice(b"Content-Length: ");
            coregate_http1::reply::push_u64(&mut out, n);
            out.extend_from_slice(b"\r\n");
        }
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

/// Whether `name` is the header that carried the request's gateway key.
fn is_key_carrier(name: &[u8], carrier: Option<Carrier>) -> bool {
    match carrier {
        Some(Carrier::Authorization) => name.eq_ignore_ascii_case(b"authorization"),
        Some(Carrier::ApiKeyHeader) => name.eq_ignore_ascii_case(b"x-api-key"),
        Some(Carrier::WebSocketProtocol) => name.eq_ignore_ascii_case(b"sec-websocket-protocol"),
        Some(Carrier::Query) | None => false,
    }
}

/// `Sec-WebSocket-Protocol` without its key entries (left out when nothing remains).
fn push_protocols_without_key(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let kept: Vec<&[u8]> = coregate_http1::list_elements(value)
        .filter(|p| !p.starts_with(WS_KEY_PREFIX))
        .collect();
    if !kept.is_empty() {
        push_header(out, name, &kept.join(&b", "[..]));
    }
}

/// What an upgrade request expects of the provider's 101, taken from the client's head
/// before it is consumed.
#[derive(Default)]
pub(super) struct Handshake {
    /// The `coregate-key.` entry of `Sec-WebSocket-Protocol` that carried the request's
    /// gateway key, when that is where the key came from ([`select_key_protocol`]).
    pub key_protocol: Option<Vec<u8>>,
    /// The `Sec-WebSocket-Accept` a 101 to `websocket` must carry (RFC 6455 §4.2.2);
    /// `None` when the client sent no `Sec-WebSocket-Key`.
    ws_accept: Option<String>,
}

impl Handshake {
    pub(super) fn of(buf: &[u8], headers: &[HeaderRange], carrier: Option<Carrier>) -> Handshake {
        let key_protocol = match carrier {
            Some(Carrier::WebSocketProtocol) => {
                field_elements(buf, headers, b"sec-websocket-protocol")
                    .find(|p| p.starts_with(WS_KEY_PREFIX))
                    .map(<[u8]>::to_vec)
            }
            _ => None,
        };
        let ws_accept = field_elements(buf, headers, b"sec-websocket-key")
            .next()
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(coregate_http1::websocket::accept_key);
        Handshake {
            key_protocol,
            ws_accept,
        }
    }

    /// Whether the provider's 101 (`buf`, `headers`) is one the request asked for: it
    /// switches only to protocols the request offered (RFC 9110 §15.2.2), and a switch to
    /// WebSocket proves that the provider read this request's key (RFC 6455 §4.1: the
    /// client fails a handshake whose accept value is wrong; so does the gateway, rather
    /// than tunnel to something that is not the WebSocket server the client asked for).
    pub(super) fn accepts(&self, buf: &[u8], headers: &[HeaderRange], offered: &[Vec<u8>]) -> bool {
        if !switched_to_offered(buf, headers, offered) {
            return false;
        }
        if !field_elements(buf, headers, b"upgrade").any(|p| p.eq_ignore_ascii_case(b"websocket")) {
            return true;
        }
        let accept = field_elements(buf, headers, b"sec-websocket-accept").next();
        matches!((accept, &self.ws_accept), (Some(a), Some(want)) if a == want.as_bytes())
    }
}

/// Completes the client's 101 (just written at the end of `out`) with `Sec-WebSocket-Protocol:
/// protocol` when the provider's (`buf`, `headers`) selected none. A browser fails a
/// WebSocket whose 101 selects none of the protocols it offered (the WHATWG fetch standard),
/// and a browser that sends its gateway key as a protocol entry offers at least that one,
/// which the provider never saw: the gateway selects it on the client's side.
pub(super) fn select_key_protocol(
    out: &mut Vec<u8>,
    buf: &[u8],
    headers: &[HeaderRange],
    protocol: &[u8],
) {
    if field_elements(buf, headers, b"sec-websocket-protocol")
        .next()
        .is_some()
        || !out.ends_with(b"\r\n\r\n")
    {
        return;
    }
    out.truncate(out.len() - 2);
    push_header(out, b"Sec-WebSocket-Protocol", protocol);
    out.extend_from_slice(b"\r\n");
}

/// `Max-Forwards` of an OPTIONS request, one less (RFC 9110 §7.6.2: each intermediary
/// updates it; a request that arrived with 0 was answered by the gateway itself). A value
/// that is not a number is passed on as it came.
fn push_max_forwards(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    match coregate_http1::max_forwards(value) {
        Some(n) => {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            coregate_http1::reply::push_u64(out, n.saturating_sub(1));
            out.extend_from_slice(b"\r\n");
        }
        None => push_header(out, name, value),
    }
}

/// The request target without its `access_token` query parameter.
fn without_query_key(target: &[u8]) -> Vec<u8> {
    let Some(q) = target.iter().position(|&b| b == b'?') else {
        return target.to_vec();
    };
    let kept: Vec<&[u8]> = target[q + 1..]
        .split(|&b| b == b'&')
        .filter(|pair| !pair.starts_with(b"access_token="))
        .collect();
    let mut out = target[..q].to_vec();
    if !kept.is_empty() {
        out.push(b'?');
        out.extend_from_slice(&kept.join(&b"&"[..]));
    }
    out
}

/// What the provider is told about the client (`X-Forwarded-For`, `X-Forwarded-Proto`)
/// and the request (`X-Request-Id`).
#[derive(Clone, Copy)]
pub struct ClientFacts {
    pub peer: Option<std::net::IpAddr>,
    /// The client connected over TLS.
    pub https: bool,
    pub request_id: Option<RequestId>,
    /// Where the gateway key came from: it is removed before the request goes on.
    pub key_carrier: Option<Carrier>,
}

/// How the response body goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientFraming {
    None,
    Length,
    Chunked,
    UntilClose,
}

/// Writes an interim (1xx) or 101 response head for the client: no framing, no date, and
/// the connection fields as the provider sent them.
pub(super) fn interim_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    resp: &ResponseHead,
    headers: &[HeaderRange],
) {
    let none = ClientFraming::None;
    response_head(out, buf, resp, headers, none, false, false, None, &[], None);
}

/// Writes the response head for the client into `out`: final, interim (1xx) or 101.
/// `date` is added when the provider sent none (RFC 9110 §6.6.1: a recipient with a clock
/// adds one when forwarding); interim responses pass `None`. `request_id` is returned as
/// `X-Request-Id`; the provider's own id, if it sent one, as `X-Upstream-Request-Id`.
/// `codings` are the transfer
/// codings still on the body as relayed ([`transfer_codings`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn response_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    resp: &ResponseHead,
    headers: &[HeaderRange],
    framing: ClientFraming,
    close: bool,
    client_http10: bool,
    date: Option<&[u8]>,
    codings: &[&[u8]],
    request_id: Option<&[u8]>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    coregate_http1::reply::push_u64(out, u64::from(resp.status));
    out.push(b' ');
    out.extend_from_slice(&buf[resp.reason.clone()]);
    out.extend_from_slice(b"\r\n");
    let listed = connection_listed(buf, headers);
    let mut via: Vec<&[u8]> = Vec::new();
    let keep_length = framing == ClientFraming::None && resp.status != 204 && resp.status >= 200;
    let mut dated = false;
    // A 101 always says what it switched (the Upgrade field is the provider's to send).
    let mut upgrade_offered = resp.status == 101;
    for h in headers {
        let name = &buf[h.name.clone()];
        let value = &buf[h.value.clone()];
        dated |= name.eq_ignore_ascii_case(b"date");
        // A 101 names the protocol switched to, a 426 the one to upgrade to (which the
        // gateway can tunnel): `Upgrade` stays, with its `Connection` option.
        let names_protocol = resp.status == 101 || resp.status == 426;
        if names_protocol && !client_http10 && name.eq_ignore_ascii_case(b"upgrade") {
            push_header(out, name, value);
            upgrade_offered = true;
            continue;
        }
        // HEAD and 304 answers keep the Content-Length that describes the absent body.
        if keep_length && name.eq_ignore_ascii_case(b"content-length") {
            push_header(out, name, value);
            continue;
        }
        if is_hop_by_hop(name) || listed.iter().any(|l| l.eq_ignore_ascii_case(name)) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"via") {
            via.push(value);
        } else if request_id.is_some() && name.eq_ignore_ascii_case(b"x-request-id") {
            // The provider's own id (OpenAI, Deepgram send one): kept, for its support.
            if request_id != Some(value) {
                push_header(out, b"X-Upstream-Request-Id", value);
            }
        } else {
            push_header(out, name, value);
        }
    }
    if let Some(id) = request_id {
        push_header(out, b"X-Request-Id", id);
    }
    if let (false, Some(date)) = (dated, date) {
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
    }
    push_via(out, &via, resp.http11);
    match (framing, resp.framing) {
        (ClientFraming::Length, Framing::Length(n)) => {
            out.extend_from_slice(b"Content-Length: ");
            coregate_http1::reply::push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        (ClientFraming::Chunked, _) => {
            out.extend_from_slice(b"Transfer-Encoding: ");
            for c in codings {
                out.extend_from_slice(c);
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(b"chunked\r\n");
        }
        // Relayed undecoded until close: the provider's codings describe the bytes as they are.
        (ClientFraming::UntilClose, _) if !codings.is_empty() => {
            out.extend_from_slice(b"Transfer-Encoding: ");
            out.extend_from_slice(&codings.join(&b", "[..]));
            out.extend_from_slice(b"\r\n");
        }
        _ => {}
    }
    match (upgrade_offered, close) {
        (true, true) => out.extend_from_slice(b"Connection: Upgrade, close\r\n"),
        (true, false) => out.extend_from_slice(b"Connection: Upgrade\r\n"),
        (false, _) => out.extend_from_slice(Persist::of(close, client_http10).field()),
    }
    out.extend_from_slice(b"\r\n");
}

/// The transfer codings that still apply to the body bytes as relayed: those before the
/// final `chunked` the gateway decodes, or all of them on a close-delimited body (RFC 9112
/// §6.3: a response whose codings do not end in chunked is read until close, undecoded).
pub(super) fn transfer_codings<'a>(
    buf: &'a [u8],
    headers: &'a [HeaderRange],
    framing: Framing,
) -> Vec<&'a [u8]> {
    let mut te: Vec<&[u8]> = field_elements(buf, headers, b"transfer-encoding").collect();
    if framing == Framing::Chunked {
        te.pop();
    }
    te
}

/// Appends `Via`: the received values, then this hop (RFC 9110 §7.6.3).
fn push_via(out: &mut Vec<u8>, received: &[&[u8]], http11: bool) {
    out.extend_from_slice(b"Via: ");
    for v in received {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(if http11 {
        b"1.1 coregate\r\n"
    } else {
        b"1.0 coregate\r\n"
    });
}
