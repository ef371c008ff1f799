//! The body meter's fuzz target (fuzz/fuzz_targets/meter.rs), here so that
//! tests/fuzz_corpus.rs replays its corpus through the very same code.
//!
//! A request body is untrusted input read on a shard: a panic in the meter would end the
//! shard, and with it the process. The invariants, for any body and any content type:
//! * no panic, no unbounded work or memory (the readers keep a few bounded states);
//! * the figures do not depend on how the body was split into reads;
//! * no figure is larger than the body allows: characters and unmetered bytes at most its
//!   length.

use super::{BodyMeter, Measured};
use coregate_http1::fuzzing::{cuts, pieces};

/// The request shapes the first byte of an input picks: (Content-Type, request target).
const SHAPES: [(&[u8], &[u8]); 6] = [
    (b"audio/wav", b"/v1/audio/transcriptions"),
    (b"application/json", b"/v1/audio/speech"),
    (
        b"multipart/form-data; boundary=XyZ",
        b"/v1/audio/transcriptions",
    ),
    (
        b"Multipart/Form-Data; charset=x; boundary=\"a b\"",
        b"/listen?encoding=mulaw&sample_rate=8000",
    ),
    (b"text/plain; charset=utf-8", b"/tts"),
    (
        b"application/octet-stream",
        b"/v1/listen?encoding=linear16&sample_rate=16000&channels=2",
    ),
];

/// One input: its first byte picks the shape, its second how many cuts split the rest into
/// reads (at offsets `coregate_http1::fuzzing::cuts` derives from it); the rest is the body.
pub fn body(data: &[u8]) {
    let [shape, split, body @ ..] = data else {
        return;
    };
    let (ct, target) = SHAPES[usize::from(*shape) % SHAPES.len()];
    let whole = measure(ct, target, &[body]);
    let split_up = measure(
        ct,
        target,
        &pieces(body, &cuts(body, 1 + usize::from(*split))),
    );
    assert_eq!(whole, split_up, "the split changed the figures");
    let len = body.len() as u64;
    assert!(
        whole.chars <= len && whole.unmetered_bytes <= len,
        "{whole:?} of {len} bytes"
    );
}

fn measure(ct: &[u8], target: &[u8], reads: &[&[u8]]) -> Measured {
    let mut m = BodyMeter::for_request(ct, target);
    for r in reads {
        m.feed(r);
    }
    m.finish()
}
