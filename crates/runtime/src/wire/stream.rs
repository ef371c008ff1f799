//! The socket under a connection's two halves: [`Stream`], a shared handle on one plain or
//! TLS connection, with the raw socket operations both halves need (reads with a deadline,
//! writes, gathered sends, shutdowns, the idle-input check). [`super::Rx`] and
//! [`super::Tx`] hold one each and add the buffering.

use crate::deadline::{Armed, Slot};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

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

    /// Waits until a read would not wait, without a buffer (see [`super::Rx::park`]); with a
    /// deadline like [`Stream::read_within`] when `slot` is given.
    pub(super) async fn readable(&self, deadline: Option<(&Slot, Duration)>) -> io::Result<()> {
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
