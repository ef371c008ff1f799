//! A buffered HTTP/1.1 byte stream: one socket with its read and write buffers.
//!
//! Shared by the gateway's client connections (`conn`) and the mock provider. It knows how
//! to read more bytes under a timeout, hand out request-body bytes according to their
//! framing, batch small writes, and close politely (lingering so the peer reads our last
//! response instead of a reset). It keeps byte counts for the owner to fold into its stats.

use crate::http::chunked::ChunkedDecoder;
use crate::http::{Framing, HttpError};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::io;
use std::net::Shutdown;
use std::ops::Range;
use std::time::{Duration, Instant};

/// Read buffer size while streaming a body.
pub const BODY_BUF: usize = 16 * 1024;
/// Writes up to this size are batched in the write buffer; larger ones go straight out.
const BATCH: usize = 16 * 1024;
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

pub struct Wire {
    pub stream: TcpStream,
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    pub wbuf: Vec<u8>,
    /// Bytes read / written since the owner last took them.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Wire {
    pub fn new(stream: TcpStream, initial_buf: usize) -> Wire {
        Wire {
            stream,
            rbuf: vec![0; initial_buf],
            rpos: 0,
            rend: 0,
            wbuf: Vec::new(),
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// Unconsumed input.
    pub fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..self.rend]
    }

    pub fn consume(&mut self, n: usize) {
        self.rpos = (self.rpos + n).min(self.rend);
        if self.rpos == self.rend {
            self.rpos = 0;
            self.rend = 0;
        }
    }

    pub fn slice(&self, r: Range<usize>) -> &[u8] {
        &self.rbuf[r]
    }

    /// Ensures free space after the buffered input, growing the buffer up to `max`.
    pub fn make_room(&mut self, max: usize) {
        if self.rend < self.rbuf.len() {
            return;
        }
        if self.rpos > 0 {
            self.rbuf.copy_within(self.rpos..self.rend, 0);
            self.rend -= self.rpos;
            self.rpos = 0;
        } else if self.rbuf.len() < max {
            let len = (self.rbuf.len() * 2).clamp(1024, max);
            self.rbuf.resize(len, 0);
        }
    }

    /// Reads once into the free space (call `make_room` first). `Ok(0)`: peer closed.
    pub async fn read_some(&mut self, timeout: Duration) -> io::Result<usize> {
        if timeout.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        if self.rend == self.rbuf.len() {
            return Err(io::Error::other("read buffer full"));
        }
        let _ = self.stream.set_read_timeout(Some(timeout));
        let n = self.stream.read(&mut self.rbuf[self.rend..]).await?;
        self.rend += n;
        self.bytes_in += n as u64;
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
                    if self.rpos == self.rend {
                        self.fill_body(timeout).await?;
                    }
                    let n = ((self.rend - self.rpos) as u64).min(*rem) as usize;
                    let r = self.rpos..self.rpos + n;
                    self.rpos += n;
                    *rem -= n as u64;
                    return Ok(Some(r));
                }
                BodyState::Chunked(dec) => {
                    if self.rpos == self.rend {
                        self.fill_body(timeout).await?;
                    }
                    let step = dec
                        .step(&self.rbuf[self.rpos..self.rend])
                        .map_err(BodyError::Http)?;
                    let start = self.rpos + step.data_start;
                    self.rpos += step.consumed;
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
        self.rpos = 0;
        self.rend = 0;
        if self.rbuf.len() < BODY_BUF {
            self.rbuf.resize(BODY_BUF, 0);
        }
        match self.read_some(timeout).await {
            Ok(0) => Err(BodyError::Closed),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(BodyError::Timeout),
            Err(e) => Err(BodyError::Io(e)),
        }
    }

    /// Writes the output buffer.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let res = self.stream.write_all(&self.wbuf).await;
        self.bytes_out += self.wbuf.len() as u64;
        self.wbuf.clear();
        res
    }

    /// Writes `data` after whatever is queued; small writes are batched.
    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        if self.wbuf.len() + data.len() <= BATCH {
            self.wbuf.extend_from_slice(data);
            return Ok(());
        }
        self.flush().await?;
        let res = self.stream.write_all(data).await;
        self.bytes_out += data.len() as u64;
        res
    }

    /// Flushes, half-closes, and briefly discards input so the peer reads our last
    /// response rather than a TCP reset caused by unread data.
    pub async fn close(&mut self) {
        if self.flush().await.is_err() {
            return;
        }
        if self.stream.shutdown(Shutdown::Write).await.is_err() {
            return;
        }
        let deadline = Instant::now() + LINGER;
        let mut drained = 0usize;
        while drained < 256 * 1024 {
            self.rpos = 0;
            self.rend = 0;
            match self
                .read_some(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    }
}
