//! Buffered HTTP/1.1 byte streams, split into a read side ([`Rx`]) and a write side
//! ([`Tx`]) over one socket.
//!
//! Shared by the gateway's client connections, its provider connections and the mock
//! provider. The split lets one task read a request body from the client while it writes
//! the response to that same client (full duplex, as streaming speech APIs need): the two
//! halves hold a [`Stream`] handle each — an `Rc<RefCell<TcpStream>>` borrowed only for the
//! duration of a single poll, never across an await. The handle and its socket operations are
//! in [`stream`]; this module is the buffering on top.

pub mod stream;

pub use stream::Stream;

use crate::deadline::{Slot, WaitClass};
use coregate_http1::chunked::ChunkedDecoder;
use coregate_http1::{Framing, HttpError};
use glommio::net::TcpStream;
use std::io;
use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Read buffer size while streaming a body.
pub const BODY_BUF: usize = 16 * 1024;
/// Writes up to this size are batched in the write buffer; larger ones go straight out.
const BATCH: usize = 16 * 1024;
/// The write buffer's first size (responses heads and small bodies fit).
const WRITE_BUF: usize = 4096;
/// How long a closing connection keeps reading (and discarding) input.
const LINGER: Duration = Duration::from_secs(1);

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
