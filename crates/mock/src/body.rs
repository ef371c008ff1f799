//! Writing a mock response's body: whole, streamed in parts (chunked, by length or until
//! close), echoed, stalled or reset as the knobs ask; and reading a request body whole.

use super::*;

/// A response whose whole body is in memory.
#[derive(Clone, Copy)]
pub(super) struct Whole<'a> {
    pub(super) status: u16,
    pub(super) ctype: &'a str,
    pub(super) out: Out,
    pub(super) close: bool,
    pub(super) head_only: bool,
}

/// Sends a head and an in-memory body (no body for HEAD), applying the stall and reset
/// knobs between them when given.
pub(super) async fn send_whole(
    wire: &mut Wire,
    w: Whole<'_>,
    body: &[u8],
    knobs: Option<&Knobs>,
) -> std::io::Result<()> {
    start(wire, w.status, w.ctype, w.out, body.len() as u64, w.close);
    if let Some(k) = knobs {
        stall_and_maybe_reset(wire, k).await?;
    }
    if w.head_only {
        return wire.tx.flush().await;
    }
    body_part(wire, w.out, body).await?;
    finish(wire, w.out).await
}

pub(super) async fn stall_and_maybe_reset(wire: &mut Wire, k: &Knobs) -> std::io::Result<()> {
    if k.reset == Some(Reset::AfterHead) {
        wire.tx.buf.extend_from_slice(b"partial");
        wire.tx.flush().await?;
        glommio::timer::sleep(Duration::from_millis(10)).await;
        return Err(reset(wire));
    }
    if !k.stall.is_zero() {
        wire.tx.flush().await?;
        glommio::timer::sleep(k.stall).await;
    }
    Ok(())
}

pub(super) fn start(wire: &mut Wire, status: u16, ctype: &str, out: Out, len: u64, close: bool) {
    let length = match out {
        Out::Length => Len::Fixed(len),
        Out::Chunked => Len::Chunked,
        Out::UntilClose => Len::UntilClose,
    };
    write_head(
        wire,
        status,
        ctype,
        length,
        close || out == Out::UntilClose,
        &[],
    );
}

pub(super) async fn body_part(wire: &mut Wire, out: Out, data: &[u8]) -> std::io::Result<()> {
    if out == Out::Chunked {
        let mut frame = Vec::with_capacity(data.len() + 16);
        encode_chunk(&mut frame, data);
        wire.tx.send(&frame).await
    } else {
        wire.tx.send(data).await
    }
}

pub(super) async fn finish(wire: &mut Wire, out: Out) -> std::io::Result<()> {
    if out == Out::Chunked {
        wire.tx.send(LAST_CHUNK).await?;
    }
    wire.tx.flush().await
}

/// Reads a whole body (up to `limit` bytes kept; the rest is read and dropped).
pub(super) async fn read_all(
    wire: &mut Wire,
    body: &mut BodyState,
    limit: u64,
) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        match wire.rx.body_chunk(body, TIMEOUT).await {
            Ok(Some(r)) => {
                if (data.len() as u64) < limit {
                    data.extend_from_slice(wire.rx.slice(r));
                }
            }
            Ok(None) => return Ok(data),
            Err(e) => return Err(std::io::Error::other(format!("{e:?}"))),
        }
    }
}

/// Streams the request body back as it arrives.
pub(super) async fn echo(
    wire: &mut Wire,
    body: &mut BodyState,
    status: u16,
    out: Out,
    close: bool,
) -> std::io::Result<bool> {
    let (out, len) = match (out, &*body) {
        (Out::Length, BodyState::Length(n)) => (Out::Length, *n),
        (Out::Length, BodyState::Done) => (Out::Length, 0),
        (Out::UntilClose, _) => (Out::UntilClose, 0),
        _ => (Out::Chunked, 0),
    };
    start(wire, status, "application/octet-stream", out, len, close);
    wire.tx.flush().await?;
    let mut frame = Vec::new();
    loop {
        match wire.rx.body_chunk(body, TIMEOUT).await {
            Ok(Some(r)) => {
                let data = wire.rx.slice(r);
                frame.clear();
                if out == Out::Chunked {
                    encode_chunk(&mut frame, data);
                } else {
                    frame.extend_from_slice(data);
                }
                wire.tx.send(&frame).await?;
                // Echo each piece as it comes: streamed back, not held until the body ends.
                wire.tx.flush().await?;
            }
            Ok(None) => break,
            Err(e) => return Err(std::io::Error::other(format!("{e:?}"))),
        }
    }
    finish(wire, out).await?;
    Ok(!close && out != Out::UntilClose)
}
