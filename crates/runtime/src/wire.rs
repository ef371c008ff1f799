//! Buffered HTTP/1.1 byte streams, split into a read side ([`Rx`]) and a write side
//! ([`Tx`]) over one socket.
//!
//! Shared by the gateway's client connections, its provider connections and the mock
//! provider. The split lets one task read a request body from the client while it writes
//! the response to that same client (full duplex, as streaming speech APIs need): the two
//! halves hold a [`Stream`] handle each — an `Rc<RefCell<TcpStream>>` borrowed only for the
//! duration of a single poll, never across an await.

use crate::deadline::{Armed, Slot, WaitClass};
use coregate_http1::chunked::ChunkedDecoder;
use coregate_http1::{Framing, HttpError};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Read buffer size while streaming a body.
pub const BODY_BUF: usize = 16 * 1024;
/// Writes up to this size are batched in the write buffer; larger ones go straight out.
const BATCH: usize = 16 * 1024;
/// The write buffer's first size (responses heads and small bodies fit).
const WRITE_BUF: usize = 4096;
/// How long a closing connection keeps reading (and discarding) input.
const LINGER: Duration = Duration::from_secs(1);

/// The connection under a [`Stream`]: a plain socket or TLS over one.
enum Io {
    Plain(TcpStream),
    Tls(Box<futures_rustls::TlsStream<TcpStream>>),
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_ref().0,
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => match ready!(Pin::new(&mut **s).poll_read(cx, buf)) {
                // A TCP close without close_notify. HTTP/1.1 frames its own messages, so
                // a truncated message is seen as one, as after a plain FIN (RFC 9112 §9.8:
                // many clients close that way); treat it as the end of input.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(0)),
                r => Poll::Ready(r),
            },
        }
    }

    /// Writes some bytes. Through TLS they are also flushed onto the socket before this
    /// returns, so a write means the same on both kinds: the bytes left the process.
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => {
                let n = ready!(Pin::new(&mut **s).poll_write(cx, buf))?;
                match Pin::new(&mut **s).poll_flush(cx) {
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    // The records not yet on the socket go out with the next write or
                    // flush; the plaintext is accepted.
                    _ => Poll::Ready(Ok(n)),
                }
            }
        }
    }

    /// Ready once a read would not wait. Through TLS at once: rustls may hold decrypted
    /// bytes that no socket readiness announces.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Io::Plain(s) => s.poll_readable(cx),
            Io::Tls(_) => Poll::Ready(()),
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Plain(_) => Poll::Ready(Ok(())),
            Io::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }
}

/// A shared handle to one connection (plain or TLS), used by its read and write halves.
#[derive(Clone)]
pub struct Stream(Rc<RefCell<Io>>);

impl Stream {
    pub fn new(s: TcpStream) -> Stream {
        Stream(Rc::new(RefCell::new(Io::Plain(s))))
    }

    /// A connection whose TLS handshake is done (see [`crate::tls`]).
    pub fn tls(s: futures_rustls::TlsStream<TcpStream>) -> Stream {
        Stream(Rc::new(RefCell::new(Io::Tls(Box::new(s)))))
    }

    pub fn is_tls(&self) -> bool {
        matches!(*self.0.borrow(), Io::Tls(_))
    }

    pub fn fd(&self) -> i32 {
        self.0.borrow().tcp().as_raw_fd()
    }

    pub fn set_write_timeout(&self, d: Duration) {
        let _ = self.0.borrow().tcp().set_write_timeout(Some(d));
    }

    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| self.0.borrow_mut().poll_read(cx, buf)).await
    }

    /// Reads some bytes, failing with `TimedOut` when none came within `timeout`
    /// (enforced by the thread's deadline sweep, see [`crate::deadline`]).
    pub async fn read_within(
        &self,
        buf: &mut [u8],
        slot: &Slot,
        timeout: Duration,
    ) -> io::Result<usize> {
        let _armed = Armed(slot);
        poll_fn(|cx| {
            if slot.fired() {
                return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
            }
            let r = self.0.borrow_mut().poll_read(cx, &mut *buf);
            if r.is_pending() {
                slot.arm(timeout, cx.waker());
            }
            r
        })
        .await
    }

    /// Waits until a read would not wait, without a buffer (see [`Rx::park`]); with a
    /// deadline like [`Stream::read_within`] when `slot` is given.
    async fn readable(&self, deadline: Option<(&Slot, Duration)>) -> io::Result<()> {
        let _armed = deadline.map(|(slot, _)| Armed(slot));
        poll_fn(|cx| {
            if let Some((slot, _)) = deadline {
                if slot.fired() {
                    return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                }
            }
            let r = self.0.borrow_mut().poll_readable(cx);
            match (r, deadline) {
                (Poll::Ready(()), _) => Poll::Ready(Ok(())),
                (Poll::Pending, Some((slot, timeout))) => {
                    slot.arm(timeout, cx.waker());
                    Poll::Pending
                }
                (Poll::Pending, None) => Poll::Pending,
            }
        })
        .await
    }

    /// Writes some of `data` (at least one byte unless it is empty); returns how much.
    pub async fn write(&self, data: &[u8]) -> io::Result<usize> {
        poll_fn(|cx| self.0.borrow_mut().poll_write(cx, data)).await
    }

    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.write(data).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            data = &data[n..];
        }
        self.flush().await
    }

    /// Pushes out TLS records still buffered (nothing to do on a plain socket).
    pub async fn flush(&self) -> io::Result<()> {
        poll_fn(|cx| self.0.borrow_mut().poll_flush(cx)).await
    }

    /// Whether bytes, a FIN or an error arrived while nobody was reading, as far as this
    /// thread has seen: glommio's readiness poll (armed after every partial read) answers it
    /// without a syscall. Input that arrived after the thread last reaped completions is not
    /// seen yet; nginx's keep-alive cache has the same window (it learns of input on an idle
    /// connection from its event loop too). Peeking at the socket instead closed that window
    /// but cost 15-20 % per proxied request (docs/benchmarks.md). Without an armed poll (the
    /// last read filled the buffer) it peeks.
    ///
    /// Through TLS, input may be only handshake messages (TLS 1.3 session tickets arrive
    /// after the handshake): then a non-blocking read through TLS tells whether any
    /// application data or a close came with them.
    pub fn input_while_idle(&self) -> bool {
        let reported = self.0.borrow().tcp().input_reported();
        if let Some(reported) = reported {
            return reported && self.tls_input_now();
        }
        let mut byte = 0u8;
        // SAFETY: recv(2) writes at most one byte into `byte`, which outlives the call; the
        // fd is ours. MSG_PEEK leaves the input where it is.
        let n = unsafe {
            libc::recv(
                self.fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        !(n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock)
    }

    /// Whether a read through TLS yields anything now (data, close or error) rather than
    /// waiting; always true on a plain socket. Bytes read here are lost: only ask about a
    /// connection that is unusable if any came.
    fn tls_input_now(&self) -> bool {
        let mut io = self.0.borrow_mut();
        if let Io::Plain(_) = &*io {
            return true;
        }
        let mut byte = [0u8; 1];
        let mut cx = Context::from_waker(Waker::noop());
        io.poll_read(&mut cx, &mut byte).is_ready()
    }

    /// One non-blocking gathered send of `a` then `b`; how much went out, or `None` when
    /// nothing could be written now (the caller falls back to the waiting write, which also
    /// reports errors).
    pub fn try_writev(&self, a: &[u8], b: &[u8]) -> Option<usize> {
        if self.is_tls() {
            // TLS records are built in user space: nothing to gather here.
            return None;
        }
        let mut iov = [
            libc::iovec {
                iov_base: a.as_ptr() as *mut libc::c_void,
                iov_len: a.len(),
            },
            libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            },
        ];
        // SAFETY: a zeroed msghdr is valid (no name, no control data); it points at `iov`,
        // which outlives the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len() as _;
        // SAFETY: sendmsg(2) only reads the two slices the iovecs describe; the fd is ours.
        // MSG_DONTWAIT keeps it from blocking, MSG_NOSIGNAL from raising SIGPIPE.
        let n = unsafe { libc::sendmsg(self.fd(), &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        usize::try_from(n).ok().filter(|&n| n > 0)
    }

    /// Shuts both directions down: a read waiting on this socket ends at once.
    pub fn shutdown_both(&self) {
        let _ = self.shutdown(libc::SHUT_RDWR);
    }

    /// Half-closes the write direction: a TLS close_notify first, then a FIN.
    pub async fn shutdown_write(&self) -> io::Result<()> {
        if self.is_tls() {
            return poll_fn(|cx| match &mut *self.0.borrow_mut() {
                Io::Tls(s) => Pin::new(&mut **s).poll_close(cx),
                Io::Plain(_) => Poll::Ready(Ok(())),
            })
            .await;
        }
        self.shutdown(libc::SHUT_WR)
    }

    fn shutdown(&self, how: libc::c_int) -> io::Result<()> {
        // SAFETY: shutdown(2) on a descriptor this handle owns; no memory is involved.
        if unsafe { libc::shutdown(self.fd(), how) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Arms a TCP reset: with SO_LINGER 0, closing the socket sends RST instead of FIN.
    pub fn set_linger_zero(&self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt reads `linger` for the given length; the fd is ours.
        unsafe {
            libc::setsockopt(
                self.fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
}

/// Why a body could not be read to its end.
#[derive(Debug)]
pub enum BodyError {
    /// Malformed chunked framing: answer 400 (if nothing was sent yet) and close.
    Http(HttpError),
    Timeout,
    /// The peer closed before the body ended.
    Closed,
    Io(io::Error),
}

/// The body still to be read.
#[derive(Debug)]
pub enum BodyState {
    Length(u64),
    Chunked(ChunkedDecoder),
    Done,
}

impl BodyState {
    pub fn new(framing: Framing) -> BodyState {
        match framing {
            Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(ChunkedDecoder::default()),
            // Requests are never close-delimited; the parser does not produce this.
            Framing::UntilClose => BodyState::Done,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, BodyState::Done)
    }
}

/// The read side: a buffer of received, not yet consumed bytes.
pub struct Rx {
    pub stream: Stream,
    /// Allocated when input arrives, and given back by [`Rx::park`] while the connection
    /// idles: an open connection with nothing to read (a keep-alive client between requests,
    /// a pooled provider connection) holds no buffer.
    buf: Vec<u8>,
    /// The buffer's size when it is first needed.
    initial: usize,
    /// The size the next allocation takes (`initial`, or less: see [`Rx::make_room`]).
    next_len: usize,
    pos: usize,
    end: usize,
    /// Bytes read since the owner last took them.
    pub bytes: u64,
    /// Enforce the read timeout (the default). The load generator turns it off and
    /// enforces its request timeout with a sweep of its own, which shuts sockets down.
    pub timed: bool,
    /// This connection's read deadline, made on the first timed read.
    deadline: Option<Rc<Slot>>,
}

impl Rx {
    pub fn new(stream: Stream, initial_buf: usize) -> Rx {
        Rx {
            stream,
            buf: Vec::new(),
            initial: initial_buf.max(1),
            next_len: initial_buf.max(1),
            pos: 0,
            end: 0,
            bytes: 0,
            timed: true,
            deadline: None,
        }
    }

    /// Says what this connection's next reads wait for (until changed), so that a drain can
    /// cut those waits short ([`crate::deadline::cut`]).
    pub fn set_wait_class(&mut self, class: WaitClass) {
        if self.timed {
            self.deadline.get_or_insert_with(Slot::new).set_class(class);
        }
    }

    /// Unconsumed input.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    pub fn capacity(&self) -> usize {
        self.buf.len().max(self.initial)
    }

    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.end);
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
    }

    pub fn slice(&self, r: Range<usize>) -> &[u8] {
        &self.buf[r]
    }

    /// Ensures free space after the buffered input, growing the buffer up to `max`.
    pub fn make_room(&mut self, max: usize) {
        if self.buf.is_empty() {
            // Allocated by the read, once input is there.
            self.next_len = self.initial.min(max.max(1));
            return;
        }
        if self.end < self.buf.len() {
            return;
        }
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        } else if self.buf.len() < max {
            let len = (self.buf.len() * 2).clamp(1024, max);
            self.buf.resize(len, 0);
        }
    }

    /// Reads once into the free space (call `make_room` first). `Ok(0)`: peer closed.
    pub async fn read_some(&mut self, timeout: Duration) -> io::Result<usize> {
        if timeout.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        if self.buf.is_empty() {
            if !self.stream.is_tls() {
                let deadline = match self.timed {
                    true => Some((&**self.deadline.get_or_insert_with(Slot::new), timeout)),
                    false => None,
                };
                self.stream.readable(deadline).await?;
            }
            self.buf = crate::spare::take_read(self.next_len);
            self.next_len = self.initial;
        }
        if self.end == self.buf.len() {
            return Err(io::Error::other("read buffer full"));
        }
        let buf = &mut self.buf[self.end..];
        let n = if self.timed {
            let slot = self.deadline.get_or_insert_with(Slot::new);
            self.stream.read_within(buf, slot, timeout).await?
        } else {
            self.stream.read(buf).await?
        };
        self.end += n;
        self.bytes += n as u64;
        Ok(n)
    }

    /// Returns the next run of body bytes (a range valid until the next call), or `None`
    /// at the end of the body. Reads with `timeout` between reads.
    pub async fn body_chunk(
        &mut self,
        state: &mut BodyState,
        timeout: Duration,
    ) -> Result<Option<Range<usize>>, BodyError> {
        loop {
            match state {
                BodyState::Done => return Ok(None),
                BodyState::Length(0) => {
                    *state = BodyState::Done;
                    return Ok(None);
                }
                BodyState::Length(rem) => {
                    if self.pos == self.end {
                        self.fill_body(timeout).await?;
                    }
                    let n = ((self.end - self.pos) as u64).min(*rem) as usize;
                    let r = self.pos..self.pos + n;
                    self.pos += n;
                    *rem -= n as u64;
                    return Ok(Some(r));
                }
                BodyState::Chunked(dec) => {
                    if self.pos == self.end {
                        self.fill_body(timeout).await?;
                    }
                    let step = dec
                        .step(&self.buf[self.pos..self.end])
                        .map_err(BodyError::Http)?;
                    let start = self.pos + step.data_start;
                    self.pos += step.consumed;
                    if step.data_len > 0 {
                        return Ok(Some(start..start + step.data_len));
                    }
                    if step.done {
                        *state = BodyState::Done;
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Reads and drops the rest of a body, up to `limit` bytes. `Ok(false)`: over the limit.
    pub async fn discard_body(
        &mut self,
        state: &mut BodyState,
        limit: u64,
        timeout: Duration,
    ) -> Result<bool, BodyError> {
        if let BodyState::Length(n) = state {
            if *n > limit {
                return Ok(false);
            }
        }
        let mut total = 0u64;
        while let Some(chunk) = self.body_chunk(state, timeout).await? {
            total += chunk.len() as u64;
            if total > limit {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn fill_body(&mut self, timeout: Duration) -> Result<(), BodyError> {
        self.pos = 0;
        self.end = 0;
        if self.buf.len() < BODY_BUF {
            self.buf.resize(BODY_BUF, 0);
        }
        match self.read_some(timeout).await {
            Ok(0) => Err(BodyError::Closed),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(BodyError::Timeout),
            Err(e) => Err(BodyError::Io(e)),
        }
    }

    /// Gives the buffer back while nothing is buffered: the connection is about to idle
    /// (between requests, or in a pool). The next read allocates it again once input is
    /// there.
    pub fn park(&mut self) {
        if self.pos == self.end {
            crate::spare::give_read(std::mem::take(&mut self.buf));
            self.pos = 0;
            self.end = 0;
        }
    }

    /// Drops whatever is buffered.
    pub fn clear(&mut self) {
        self.pos = 0;
        self.end = 0;
    }
}

/// The write side: small writes are batched until a flush.
pub struct Tx {
    pub stream: Stream,
    pub buf: Vec<u8>,
    /// Bytes written since the owner last took them.
    pub bytes: u64,
}

impl Tx {
    pub fn new(stream: Stream) -> Tx {
        Tx {
            stream,
            buf: Vec::new(),
            bytes: 0,
        }
    }

    /// Gives the (empty) output buffer's memory back while the connection idles.
    pub fn park(&mut self) {
        if self.buf.is_empty() {
            crate::spare::give_write(std::mem::take(&mut self.buf));
        }
    }

    /// Writes the output buffer.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let res = self.stream.write_all(&self.buf).await;
        self.bytes += self.buf.len() as u64;
        self.buf.clear();
        res
    }

    /// Writes `data` after whatever is queued; small writes are batched.
    pub async fn send(&mut self, mut data: &[u8]) -> io::Result<()> {
        if self.buf.len() + data.len() <= BATCH {
            if self.buf.capacity() == 0 {
                self.buf = crate::spare::take_write(data.len().max(WRITE_BUF));
            }
            self.buf.extend_from_slice(data);
            return Ok(());
        }
        if !self.buf.is_empty() {
            // Queued bytes (a response head) and a large body in one writev: one syscall
            // and one TCP segment fewer than flushing them apart.
            if let Some(n) = self.stream.try_writev(&self.buf, data) {
                self.bytes += n as u64;
                if n >= self.buf.len() {
                    data = &data[n - self.buf.len()..];
                    self.buf.clear();
                } else {
                    self.buf.drain(..n);
                }
            }
            self.flush().await?;
        }
        let res = self.stream.write_all(data).await;
        self.bytes += data.len() as u64;
        res
    }
}

/// Both halves of one socket.
pub struct Wire {
    pub rx: Rx,
    pub tx: Tx,
}

impl Wire {
    pub fn new(stream: TcpStream, initial_buf: usize) -> Wire {
        Wire::over(Stream::new(stream), initial_buf)
    }

    /// Both halves of an already wrapped connection (plain or TLS).
    pub fn over(s: Stream, initial_buf: usize) -> Wire {
        Wire {
            rx: Rx::new(s.clone(), initial_buf),
            tx: Tx::new(s),
        }
    }

    /// Flushes, half-closes, and briefly discards input so the peer reads our last
    /// response rather than a TCP reset caused by unread data.
    pub async fn close(&mut self) {
        if self.tx.flush().await.is_err() || self.tx.stream.shutdown_write().await.is_err() {
            return;
        }
        let deadline = Instant::now() + LINGER;
        let mut drained = 0usize;
        while drained < 256 * 1024 {
            self.rx.clear();
            self.rx.make_room(BODY_BUF);
            match self
                .rx
                .read_some(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    }
}
