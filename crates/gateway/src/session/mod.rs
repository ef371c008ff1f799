//! The client side of the gateway: one client connection as a [`Session`] — read a head,
//! route it, answer or hand it to the provider side (`upstream`), repeat.
//!
//! A session is a task on its shard's executor and owns its buffers (a [`Wire`]). Its fields
//! are private: the provider side answers, flushes, discards and relays through the methods
//! below, so what a response does to the connection (counting, persistence, close) is
//! decided in one place.
//! Requests are served strictly in order (pipelined requests wait in the read buffer);
//! responses to pipelined requests are batched in the write buffer and flushed when the
//! next read would wait. Whenever framing is in doubt the connection answers, then closes.

use crate::facts::Facts;
use crate::route::Target;
use crate::shard::Shard;
use crate::upstream::ClientFacts;
use coregate_http1::reply::{json_error, Persist, Reply, CONTINUE};
use coregate_http1::request::{parse_head, HeaderRange, Parsed, RequestHead, TargetForm, Version};
use coregate_http1::HttpError;
use coregate_runtime::deadline::WaitClass;
use coregate_runtime::tls::HandshakeFailure;
pub use coregate_runtime::wire::{BodyError, BodyState};

mod record;
mod tenant;
use coregate_runtime::wire::{Rx, Stream, Tx, Wire};
use glommio::net::TcpStream;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// First size of a connection's read buffer; it grows up to the head limit when a head
/// needs it, and to the body buffer size while a body streams.
const INITIAL_BUF: usize = 4096;
/// Largest request body the gateway reads and discards to keep a connection open after
/// answering without it; larger bodies get the answer and a close.
const MAX_DISCARD: u64 = 1 << 20;
/// The methods the gateway serves (TRACE is refused: see `dispatch`).
const ALLOW: &str = "Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
/// Flush batched pipelined responses once they reach this size.
const FLUSH_AT: usize = 64 * 1024;

/// Whether the connection continues after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    KeepAlive,
    Close,
}

pub struct Session {
    shard: Rc<Shard>,
    wire: Wire,
    peer_ip: Option<std::net::IpAddr>,
    /// Header index of the current request head (reused across requests).
    headers: Vec<HeaderRange>,
    /// When the current exchange was answered, if the connection then went on as something
    /// else (a WebSocket tunnel): its latency ends there, not when the tunnel closes.
    answered_at: Option<Instant>,
    /// When the current request's head was complete: the start of its latency, and of the
    /// provider exchange's budget (one clock reading serves both).
    started_at: Instant,
    /// Requests served on this connection so far.
    requests: u64,
    /// What the current request learned (the provider side fills it).
    facts: Rc<Facts>,
    /// The current request's method, path, User-Agent and Referer, copied for its access
    /// log line (the head leaves the buffer before the line is written); only with a log.
    logged: LoggedHead,
    /// Response bytes queued but not yet written when the last request's line was logged:
    /// they were counted in that line, and are left out of the next one's.
    logged_unflushed: u64,
}

/// See [`Session::logged`]: reused buffers, so a request allocates nothing for its line.
#[derive(Default)]
struct LoggedHead {
    method: Vec<u8>,
    path: Vec<u8>,
    /// `HTTP/1.0` or `HTTP/1.1`, as the request line said.
    version: &'static str,
    user_agent: Option<Vec<u8>>,
    referer: Option<Vec<u8>>,
}

/// Counts a request as in flight (the drain waits for these) until dropped.
struct InFlight(Rc<Shard>);

impl InFlight {
    fn new(shard: &Rc<Shard>) -> InFlight {
        shard.inflight.set(shard.inflight.get() + 1);
        InFlight(shard.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.set(self.0.inflight.get().saturating_sub(1));
    }
}

/// Serves one accepted connection to the end: the TLS handshake first when `tls` is set
/// (bounded by the head timeout; a failure is counted by reason and closes). `_permit`
/// holds the connection's slot in the shard's connection cap and frees it at the end.
pub async fn serve(
    shard: Rc<Shard>,
    stream: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    _permit: glommio::sync::StaticPermit,
) {
    {
        let mut st = shard.stats.borrow_mut();
        st.counters.connections_active += 1;
        st.counters.connections_total += 1;
    }
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(shard.http.get().idle_timeout));
    let peer_ip = stream.peer_addr().ok().map(|a| a.ip());
    let stream = match tls {
        None => Some(Stream::new(stream)),
        // Boxed: a handshake's state (a whole rustls connection, several KiB) would
        // otherwise stay in the task's allocation for the connection's life.
        Some(cfg) => Box::pin(handshake(&shard, stream, cfg)).await,
    };
    if let Some(stream) = stream {
        let mut session = Session {
            shard: shard.clone(),
            wire: Wire::over(stream, INITIAL_BUF.min(shard.limits.get().max_head_bytes)),
            peer_ip,
            headers: Vec::with_capacity(16),
            answered_at: None,
            started_at: Instant::now(),
            requests: 0,
            facts: Rc::new(Facts::default()),
            logged: LoggedHead::default(),
            logged_unflushed: 0,
        };
        session.run().await;
        session.sync_bytes();
    }
    shard.stats.borrow_mut().counters.connections_active -= 1;
}

/// The server side of a client's TLS handshake, counted; `None` when it failed.
async fn handshake(
    shard: &Shard,
    tcp: TcpStream,
    cfg: Arc<rustls::ServerConfig>,
) -> Option<Stream> {
    let result = coregate_runtime::tls::accept(tcp, cfg, shard.http.get().head_timeout).await;
    let mut st = shard.stats.borrow_mut();
    match result {
        Ok((stream, hs)) => {
            st.counters.tls_handshakes += 1;
            st.counters.tls_resumed += u64::from(hs.resumed);
            Some(stream)
        }
        Err(e) => {
            st.counters.tls_handshake_failures[HandshakeFailure::of(&e) as usize] += 1;
            None
        }
    }
}

impl Session {
    async fn run(&mut self) {
        loop {
            let head = match self.read_head().await {
                Ok(Some(h)) => h,
                Ok(None) => return,
                Err(e) => {
                    self.facts.reset();
                    self.respond_bad_request(&e);
                    self.log_refused(&e);
                    self.wire.close().await;
                    return;
                }
            };
            let inflight = InFlight::new(&self.shard);
            self.requests += 1;
            self.started_at = Instant::now();
            self.begin_request(&head);
            // Boxed: the exchange's state (the provider side's nested futures, a few KiB)
            // lives only while a request is in flight, not in every idle connection's task.
            let flow = Box::pin(self.dispatch(head)).await;
            {
                let mut st = self.shard.stats.borrow_mut();
                st.counters.requests += 1;
                let end = self.answered_at.take().unwrap_or_else(Instant::now);
                st.latency(end.saturating_duration_since(self.started_at).as_micros() as u64);
            }
            let (bytes_in, bytes_out) = self.sync_bytes();
            self.end_request(bytes_in, bytes_out);
            drop(inflight);
            if flow == Flow::Close {
                self.wire.close().await;
                return;
            }
        }
    }

    /// Folds the wire's byte counts into the shard's stats; returns them (in, out).
    fn sync_bytes(&mut self) -> (u64, u64) {
        let mut st = self.shard.stats.borrow_mut();
        let (bytes_in, bytes_out) = (
            std::mem::take(&mut self.wire.rx.bytes),
            std::mem::take(&mut self.wire.tx.bytes),
        );
        st.counters.bytes_in += bytes_in;
        st.counters.bytes_out += bytes_out;
        (bytes_in, bytes_out)
    }

    /// The bytes of the current request head (valid until the head is consumed).
    pub fn head_bytes(&self) -> &[u8] {
        self.wire.rx.buffered()
    }

    /// Marks the current head as consumed; the body (if any) follows in the buffer.
    pub fn consume_head(&mut self, head: &RequestHead) {
        self.wire.rx.consume(head.head_len);
    }

    async fn dispatch(&mut self, head: RequestHead) -> Flow {
        let buf = self.head_bytes();
        let method = head.method(buf);
        // `OPTIONS *` asks about the server itself (RFC 9110 §9.3.7), not a route; an
        // OPTIONS with `Max-Forwards: 0` is for the first intermediary to answer (§7.6.2).
        let answer_options = method == b"OPTIONS"
            && (head.form == TargetForm::Asterisk || self.max_forwards() == Some(0));
        if answer_options {
            let reply = Reply {
                status: 200,
                content_type: "application/json",
                body: b"{}",
                extra: &[ALLOW],
            };
            return self.answer_locally(&head, &reply).await;
        }
        if method == b"TRACE" {
            // A provider that echoes TRACE would echo the credential the gateway adds.
            self.facts.error.set(Some("method_not_allowed"));
            let msg = "TRACE is not forwarded (it would echo the provider's credentials)";
            let body = json_error(405, "method_not_allowed", msg, None);
            let reply = Reply {
                status: 405,
                content_type: "application/json",
                body: &body,
                extra: &[ALLOW],
            };
            return self.answer_locally(&head, &reply).await;
        }
        let config = self.shard.config();
        let target = config
            .routes
            .lookup(&buf[head.host.clone()], head.path(buf));
        match target {
            Target::Route(i) => {
                // Held until the exchange (or the tunnel) ends: the tenant's place in its
                // concurrency and session counts.
                let _admission = match self.tenant_gate(&head, &config, i).await {
                    Ok(a) => a,
                    Err(refused) => return refused,
                };
                crate::upstream::exchange::proxy(self, head, config, i).await
            }
            Target::Health if method == b"GET" || method == b"HEAD" => {
                let reply = Reply {
                    status: 200,
                    content_type: "application/json",
                    body: b"{\"status\":\"ok\"}",
                    extra: &[],
                };
                self.answer_locally(&head, &reply).await
            }
            Target::Health => {
                self.facts.error.set(Some("method_not_allowed"));
                let body = json_error(405, "method_not_allowed", "use GET or HEAD", None);
                let reply = Reply {
                    status: 405,
                    content_type: "application/json",
                    body: &body,
                    extra: &["Allow: GET, HEAD"],
                };
                self.answer_locally(&head, &reply).await
            }
            Target::NotFound => {
                let path = String::from_utf8_lossy(head.path(buf)).into_owned();
                self.facts.error.set(Some("not_found"));
                let body = json_error(404, "not_found", &format!("no route for {path}"), None);
                let reply = Reply {
                    status: 404,
                    content_type: "application/json",
                    body: &body,
                    extra: &[],
                };
                self.answer_locally(&head, &reply).await
            }
        }
    }

    /// The request's `Max-Forwards`, when it has one that is a number.
    fn max_forwards(&self) -> Option<u64> {
        let buf = self.head_bytes();
        let h = self
            .headers()
            .iter()
            .find(|h| buf[h.name.clone()].eq_ignore_ascii_case(b"max-forwards"))?;
        coregate_http1::max_forwards(&buf[h.value.clone()])
    }

    /// Answers a request without a provider: reads and discards a small body so the
    /// connection can be reused, then queues the reply (flushed before the next read).
    async fn answer_locally(&mut self, head: &RequestHead, reply: &Reply<'_>) -> Flow {
        let head_only = head.is_head(self.head_bytes());
        self.consume_head(head);
        let mut close = !head.keep_alive || self.shard.draining.get();
        if head.has_body {
            let mut body = BodyState::new(head.framing);
            if head.expect_continue {
                // The client waits for permission to send a body we do not want.
                close = true;
            } else {
                match self.discard(&mut body).await {
                    Ok(true) => {}
                    Ok(false) => close = true,
                    Err(BodyError::Http(e)) => {
                        self.respond_bad_request(&e);
                        return Flow::Close;
                    }
                    Err(_) => return Flow::Close,
                }
            }
        }
        // The drain may have started while the body was read.
        let close = close || self.shard.draining.get();
        let http10 = head.version == Version::Http10;
        self.respond(reply, Persist::of(close, http10), head_only);
        let flush_failed =
            !close && self.wire.tx.buf.len() >= FLUSH_AT && self.flush().await.is_err();
        if close || flush_failed {
            Flow::Close
        } else {
            Flow::KeepAlive
        }
    }

    /// Discards the rest of a request body (up to the discard limit).
    /// `Ok(false)`: too large, the connection must close.
    pub async fn discard(&mut self, body: &mut BodyState) -> Result<bool, BodyError> {
        let timeout = self.shard.http.get().body_read_timeout;
        let res = self.wire.rx.discard_body(body, MAX_DISCARD, timeout).await;
        self.count_body_error(res)
    }

    fn count_body_error<T>(&self, res: Result<T, BodyError>) -> Result<T, BodyError> {
        if let Err(BodyError::Timeout) = &res {
            self.shard.stats.borrow_mut().counters.io_timeouts += 1;
        }
        res
    }

    /// Reads until a complete head is buffered. `Ok(None)`: the connection should end
    /// quietly (peer closed, idle timeout, drain, or a 408 was sent).
    async fn read_head(&mut self) -> Result<Option<RequestHead>, HttpError> {
        let limits = self.shard.limits.get();
        let mut deadline: Option<Instant> = None;
        loop {
            let between_requests = self.wire.rx.buffered().is_empty();
            if !between_requests {
                if self.headers.capacity() == 0 {
                    self.headers.reserve(16); // given back while idle (below)
                }
                if let Parsed::Complete(h) =
                    parse_head(self.wire.rx.buffered(), limits, &mut self.headers)?
                {
                    return Ok(Some(h));
                }
                deadline.get_or_insert_with(|| Instant::now() + self.shard.http.get().head_timeout);
            }
            if self.flush().await.is_err() {
                return Ok(None);
            }
            // A drain cuts this wait short (`deadline::cut`) when it begins meanwhile.
            self.wire.rx.set_wait_class(match between_requests {
                true => WaitClass::BetweenRequests,
                false => WaitClass::Other,
            });
            if between_requests {
                // Idle until the next request: its buffers are taken again when it arrives,
                // so thousands of keep-alive clients hold none (and a few hot ones serve all).
                self.wire.rx.park();
                self.wire.tx.park();
                self.headers = Vec::new();
            }
            let http = self.shard.http.get();
            let timeout = match deadline {
                None if self.requests == 0 => http.first_byte_timeout,
                None => http.idle_timeout,
                Some(d) => d.saturating_duration_since(Instant::now()),
            };
            let draining_until = self
                .shard
                .drain_idle_until
                .get()
                .filter(|_| deadline.is_none());
            let timeout = match draining_until {
                Some(until) => timeout.min(until.saturating_duration_since(Instant::now())),
                None => timeout,
            };
            self.wire
                .rx
                .make_room(limits.max_head_bytes.max(INITIAL_BUF));
            match self.wire.rx.read_some(timeout).await {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                // Waiting between requests when the drain closes such connections.
                Err(e)
                    if e.kind() == io::ErrorKind::TimedOut
                        && self.shard.draining.get()
                        && deadline.is_none() =>
                {
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    if deadline.is_some() {
                        self.shard.stats.borrow_mut().counters.head_timeouts += 1;
                        return Err(HttpError::new(
                            408,
                            "request_timeout",
                            "request head not received in time",
                        ));
                    }
                    self.shard.stats.borrow_mut().counters.idle_timeouts += 1;
                    return Ok(None);
                }
                Err(_) => return Ok(None),
            }
        }
    }

    /// Writes the output buffer to the client.
    pub async fn flush(&mut self) -> io::Result<()> {
        let res = self.wire.tx.flush().await;
        self.count_write_timeout(res)
    }

    fn count_write_timeout(&self, res: io::Result<()>) -> io::Result<()> {
        if let Err(e) = &res {
            if e.kind() == io::ErrorKind::TimedOut {
                self.shard.stats.borrow_mut().counters.io_timeouts += 1;
            }
        }
        res
    }

    /// Queues `reply` (flushed before the next read, or by [`Session::flush`]) and counts
    /// its status. `persist` says what the response announces about the connection.
    pub fn respond(&mut self, reply: &Reply<'_>, persist: Persist, head_only: bool) {
        let date = self.shard.date.borrow();
        let mut id_line = [0u8; 96];
        let id_line = match self.facts.request_id.get() {
            Some(id) => record::request_id_line(&mut id_line, id.as_bytes()),
            None => &[][..],
        };
        reply.write_with(
            &mut self.wire.tx.buf,
            date.get(),
            persist,
            head_only,
            id_line,
        );
        self.facts.status.set(reply.status);
        self.shard.stats.borrow_mut().response(reply.status);
    }

    /// Queues an error response that closes the connection; `provider` is named in the
    /// JSON body when the error is about one.
    pub fn respond_error(&mut self, e: &HttpError, provider: Option<&str>) {
        self.facts.error.set(Some(e.code));
        let body = json_error(e.status, e.code, &e.message, provider);
        let reply = Reply {
            status: e.status,
            content_type: "application/json",
            body: &body,
            extra: &[],
        };
        self.respond(&reply, Persist::Close, false);
    }

    /// Answers a malformed request (the connection closes) and counts it as a parse error.
    pub fn respond_bad_request(&mut self, e: &HttpError) {
        self.shard.stats.borrow_mut().counters.parse_errors += 1;
        self.respond_error(e, None);
    }

    /// Tells a client that sent `Expect: 100-continue` to send its body.
    pub async fn send_continue(&mut self) -> io::Result<()> {
        self.wire.tx.buf.extend_from_slice(CONTINUE);
        self.flush().await
    }

    /// Marks the current exchange as answered now (its latency ends here, though the
    /// connection goes on as a tunnel).
    pub fn mark_answered(&mut self) {
        self.answered_at = Some(Instant::now());
    }

    /// The shard this session runs on.
    pub fn shard(&self) -> &Rc<Shard> {
        &self.shard
    }

    /// The client's address and scheme, for `X-Forwarded-For` and `X-Forwarded-Proto`,
    /// and the request's id.
    pub fn client_facts(&self) -> ClientFacts {
        ClientFacts {
            peer: self.peer_ip,
            https: self.wire.rx.stream.is_tls(),
            request_id: self.facts.request_id.get(),
            key_carrier: self.facts.tenant.get().map(|(_, c)| c),
        }
    }

    /// What the current request learned; the provider side fills it.
    pub fn facts(&self) -> Rc<Facts> {
        self.facts.clone()
    }

    /// When the current request's head was complete.
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// The header index of the current head; the provider side borrows it while it parses
    /// the response heads and gives it back with [`Session::restore_headers`].
    pub fn take_headers(&mut self) -> Vec<HeaderRange> {
        std::mem::take(&mut self.headers)
    }

    pub fn restore_headers(&mut self, headers: Vec<HeaderRange>) {
        self.headers = headers;
    }

    /// The current head's header index (valid until the head is consumed).
    pub fn headers(&self) -> &[HeaderRange] {
        &self.headers
    }

    /// The client connection's two directions, for the paths that stream both at once:
    /// the request body upstream while the response comes down, and tunnels.
    pub fn client_io(&mut self) -> (&mut Rx, &mut Tx) {
        (&mut self.wire.rx, &mut self.wire.tx)
    }
}
