//! One virtual user's connection: opening it (optionally from a chosen source address)
//! and running one request/response exchange on it.
//!
//! Sockets are made with socket2 so a source address can be bound with
//! IP_BIND_ADDRESS_NO_PORT (the port is then picked at connect time per destination, so
//! each (source, destination) pair has the whole ephemeral range), then adopted into
//! glommio. The connect is non-blocking; the first write of the request completes it, so a
//! refused or timed-out connect surfaces there and is classified as a connect failure.

use super::record::ErrorClass;
use coregate_http1::response::{parse_response, ParsedResponse};
use coregate_http1::Framing;
use coregate_runtime::wire::{BodyError, BodyState, Rx, Stream};
use glommio::net::TcpStream;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::Duration;

/// Response heads larger than this are malformed for our purposes.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A failure with its class and, where the OS gave one, its errno.
#[derive(Debug, Clone, Copy)]
pub struct Failure {
    pub class: ErrorClass,
    pub errno: Option<i32>,
}

impl Failure {
    fn connect(e: &io::Error) -> Failure {
        Failure {
            class: ErrorClass::of_connect(e),
            errno: e.raw_os_error(),
        }
    }

    pub(super) fn exchange(e: &io::Error) -> Failure {
        Failure {
            class: ErrorClass::of_exchange(e),
            errno: e.raw_os_error(),
        }
    }

    pub(super) fn class(class: ErrorClass) -> Failure {
        Failure { class, errno: None }
    }
}

/// A client connection, fresh until its first request was written.
pub struct ClientConn {
    pub(super) rx: Rx,
    fresh: bool,
    /// Exchanges started on this connection.
    pub(super) exchanges: u64,
    pub(super) headers: Vec<coregate_http1::request::HeaderRange>,
    /// A `ws://` target's connection after its handshake.
    pub(super) ws: Option<super::ws::WsConn>,
}

/// A complete response.
#[derive(Debug, Clone, Copy)]
pub struct Response {
    pub status: u16,
    pub keep_alive: bool,
}

/// Starts a non-blocking connect to `dest` from `source` (any local address if None).
pub fn dial(dest: SocketAddr, source: Option<IpAddr>) -> Result<ClientConn, Failure> {
    let socket = Socket::new(
        Domain::for_address(dest),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(|e| Failure::connect(&e))?;
    let _ = socket.set_nodelay(true);
    if let Some(src) = source {
        if src.is_ipv4() {
            bind_address_no_port(&socket);
        }
        socket
            .bind(&SockAddr::from(SocketAddr::new(src, 0)))
            .map_err(|e| Failure::connect(&e))?;
    }
    match socket.connect(&SockAddr::from(dest)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(Failure::connect(&e)),
    }
    // SAFETY: the fd is a valid, owned, non-blocking TCP socket; glommio takes ownership.
    let stream = unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) };
    let mut rx = Rx::new(Stream::new(stream), 4096);
    // No glommio timer per read: the shard's sweep enforces --timeout (worker::sweep).
    rx.timed = false;
    Ok(ClientConn {
        rx,
        fresh: true,
        exchanges: 0,
        headers: Vec::new(),
        ws: None,
    })
}

/// Lets connect() choose the port for the (source, destination) pair instead of bind()
/// reserving one for every destination (Linux ≥ 4.2; best effort).
fn bind_address_no_port(socket: &Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `one` for the given length; the fd is valid.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

impl ClientConn {
    pub fn fd(&self) -> i32 {
        self.rx.stream.fd()
    }

    /// The last exchange was not the connection's first.
    pub fn reused(&self) -> bool {
        self.exchanges > 1
    }

    /// Sends `request` and reads the whole response (the body is read and dropped).
    /// `timeout` bounds each wait for response bytes; `connect_timeout` bounds the first
    /// write on a fresh connection, which is where the connect completes.
    pub async fn exchange(
        &mut self,
        request: &[u8],
        is_head: bool,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Response, Failure> {
        let head = self
            .exchange_head(request, is_head, timeout, connect_timeout)
            .await?;
        self.rx.consume(head.head_len);
        self.read_body(head.framing, timeout).await?;
        Ok(Response {
            status: head.status,
            keep_alive: head.keep_alive,
        })
    }

    /// Sends `request` and reads the final response head, skipping interim ones (100
    /// Continue, 103 Early Hints; a 101 is final). The head stays in the buffer, its
    /// fields in `headers`, until the caller consumes `head_len`.
    pub(super) async fn exchange_head(
        &mut self,
        request: &[u8],
        is_head: bool,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<coregate_http1::response::ResponseHead, Failure> {
        self.exchanges += 1;
        let stream = self.rx.stream.clone();
        let mut rest = request;
        if self.fresh {
            // The first write completes the connect: only it is bounded by the connect
            // timeout, so a large body to a slow reader is not called a connect failure.
            stream.set_write_timeout(connect_timeout);
            let n = stream.write(rest).await.map_err(|e| Failure::connect(&e))?;
            rest = &rest[n.min(rest.len())..];
            stream.set_write_timeout(timeout);
            self.fresh = false;
        }
        stream
            .write_all(rest)
            .await
            .map_err(|e| Failure::exchange(&e))?;
        loop {
            let head = self.read_head(is_head, timeout).await?;
            if (100..200).contains(&head.status) && head.status != 101 {
                self.rx.consume(head.head_len);
                continue;
            }
            return Ok(head);
        }
    }

    async fn read_head(
        &mut self,
        is_head: bool,
        timeout: Duration,
    ) -> Result<coregate_http1::response::ResponseHead, Failure> {
        loop {
            if !self.rx.buffered().is_empty() {
                match parse_response(
                    self.rx.buffered(),
                    is_head,
                    MAX_RESPONSE_HEAD,
                    &mut self.headers,
                ) {
                    Ok(ParsedResponse::Complete(h)) => return Ok(h),
                    Ok(ParsedResponse::Partial) => {}
                    Err(_) => return Err(Failure::class(ErrorClass::MalformedResponse)),
                }
            }
            self.fill(timeout).await?;
        }
    }

    /// Reads once more into the buffer (growing it up to the largest head); the peer
    /// closing first is `closed`.
    pub(super) async fn fill(&mut self, timeout: Duration) -> Result<(), Failure> {
        self.rx.make_room(MAX_RESPONSE_HEAD);
        match self.rx.read_some(timeout).await {
            Ok(0) => Err(Failure::class(ErrorClass::Closed)),
            Ok(_) => Ok(()),
            Err(e) => Err(Failure::exchange(&e)),
        }
    }

    /// Whether the response head in the buffer completes a WebSocket handshake:
    /// `Upgrade: websocket`, `Connection: upgrade` and the expected `Sec-WebSocket-Accept`
    /// (RFC 6455 §4.1).
    pub(super) fn upgraded_to_websocket(&self, accept: &str) -> bool {
        let buf = self.rx.buffered();
        let field = |name: &[u8]| {
            self.headers
                .iter()
                .find(|h| buf[h.name.clone()].eq_ignore_ascii_case(name))
                .map(|h| coregate_http1::trim_ows(&buf[h.value.clone()]))
        };
        let connection_upgrade = coregate_http1::field_elements(buf, &self.headers, b"connection")
            .any(|t| t.eq_ignore_ascii_case(b"upgrade"));
        field(b"upgrade").is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"))
            && connection_upgrade
            && field(b"sec-websocket-accept") == Some(accept.as_bytes())
    }

    async fn read_body(&mut self, framing: Framing, timeout: Duration) -> Result<(), Failure> {
        // The common case: the whole body arrived with the head.
        if let Framing::Length(n) = framing {
            if n <= self.rx.buffered().len() as u64 {
                self.rx.consume(n as usize);
                return Ok(());
            }
        }
        if framing == Framing::UntilClose {
            self.rx.clear();
            loop {
                self.rx.make_room(coregate_runtime::wire::BODY_BUF);
                match self.rx.read_some(timeout).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => self.rx.clear(),
                    Err(e) => return Err(Failure::exchange(&e)),
                }
            }
        }
        let mut state = BodyState::new(framing);
        match self.rx.discard_body(&mut state, u64::MAX, timeout).await {
            Ok(_) => Ok(()),
            Err(BodyError::Http(_)) => Err(Failure::class(ErrorClass::MalformedResponse)),
            Err(BodyError::Timeout) => Err(Failure::class(ErrorClass::Timeout)),
            Err(BodyError::Closed) => Err(Failure::class(ErrorClass::Closed)),
            Err(BodyError::Io(e)) => Err(Failure::exchange(&e)),
        }
    }
}
