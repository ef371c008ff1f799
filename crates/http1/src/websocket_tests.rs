use super::*;

#[test]
fn rfc6455_example() {
    // RFC 6455 §1.3's worked example.
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

/// A frame with `payload`; `len_form` forces a 7-, 16- or 64-bit length field.
fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>, len_form: u8) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    let n = payload.len();
    match len_form {
        7 => f.push(m | n as u8),
        16 => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mut p = payload.to_vec();
    if let Some(key) = mask {
        f.extend_from_slice(&key);
        apply_mask(&mut p, key);
    }
    f.extend_from_slice(&p);
    f
}

fn text(s: &str) -> Vec<u8> {
    frame(true, OP_TEXT, s.as_bytes(), Some([1, 2, 3, 4]), 7)
}

/// (error, at_boundary, close_seen, messages, payload_bytes) after feeding `pieces`.
fn follow(pieces: &[&[u8]]) -> (Option<FrameError>, bool, bool, u64, u64) {
    let mut t = FrameTracker::new();
    let mut err = None;
    for p in pieces {
        if let Err(e) = t.feed(p) {
            err = Some(e);
            break;
        }
    }
    (
        err,
        t.at_boundary(),
        t.close_seen(),
        t.messages(),
        t.payload_bytes(),
    )
}

/// Feeding `stream` whole, split in two at every offset, and byte by byte all agree.
fn same_in_any_split(stream: &[u8]) -> (Option<FrameError>, bool, bool, u64, u64) {
    let whole = follow(&[stream]);
    for cut in 0..=stream.len() {
        let (a, b) = stream.split_at(cut);
        assert_eq!(follow(&[a, b]), whole, "cut at {cut}");
    }
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(follow(&bytes), whole, "byte by byte");
    whole
}

#[test]
fn length_forms_split_at_every_offset() {
    let payload = vec![7u8; 300];
    for (form, size) in [(7, 125), (7, 0), (16, 300), (16, 5), (64, 300), (64, 0)] {
        for mask in [None, Some([9, 8, 7, 6])] {
            let f = frame(true, OP_BINARY, &payload[..size], mask, form);
            let stream = [f.clone(), f].concat();
            let r = same_in_any_split(&stream);
            assert_eq!(r, (None, true, false, 2, 2 * size as u64), "{form} {size}");
        }
    }
}

#[test]
fn payload_is_skipped_by_arithmetic() {
    // A 2^40-byte frame: only its header is fed; the tracker waits for the rest.
    let mut t = FrameTracker::new();
    let mut h = vec![0x82, 127];
    h.extend_from_slice(&(1u64 << 40).to_be_bytes());
    t.feed(&h).unwrap();
    assert!(!t.at_boundary());
    t.feed(&[0; 4096]).unwrap();
    assert_eq!((t.payload_bytes(), t.messages()), (4096, 0));
}

#[test]
fn fragmented_message_with_control_frames_between() {
    let stream = [
        frame(false, OP_TEXT, b"Hel", None, 7),
        frame(true, OP_PING, b"p", Some([1, 1, 1, 1]), 7),
        frame(false, OP_CONTINUATION, b"l", None, 16),
        frame(true, OP_PONG, b"", None, 7),
        frame(true, OP_CONTINUATION, b"o", None, 64),
        text("next"),
    ]
    .concat();
    assert_eq!(same_in_any_split(&stream), (None, true, false, 2, 9));
    // Between the fragments the tracker is at a boundary, but inside a message.
    let mut t = FrameTracker::new();
    t.feed(&frame(false, OP_BINARY, b"ab", None, 7)).unwrap();
    assert!(t.at_boundary() && t.in_message());
    assert_eq!(t.messages(), 0);
}

#[test]
fn boundary_and_counters_mid_frame() {
    let f = text("hello");
    let mut t = FrameTracker::new();
    t.feed(&f[..1]).unwrap();
    assert!(!t.at_boundary());
    t.feed(&f[1..f.len() - 1]).unwrap();
    assert_eq!(
        (t.at_boundary(), t.messages(), t.payload_bytes()),
        (false, 0, 4)
    );
    t.feed(&f[f.len() - 1..]).unwrap();
    assert_eq!(
        (t.at_boundary(), t.messages(), t.payload_bytes()),
        (true, 1, 5)
    );
}

#[test]
fn each_malformed_header_is_refused() {
    let mut long_len = vec![0x82, 127];
    long_len.extend_from_slice(&(1u64 << 63).to_be_bytes());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0x83, 0], "reserved opcode"),
        (vec![0x87, 0], "reserved opcode"),
        (vec![0x8B, 0], "reserved opcode"),
        (vec![0x8F, 0x80, 1, 2, 3, 4], "reserved opcode"),
        (
            frame(true, OP_PING, &[0; 126], None, 16),
            "control frame payload",
        ),
        (vec![0x88, 126, 0, 126], "control frame payload"),
        (vec![0x08, 0], "fragmented control frame"),
        (vec![0x09, 0x80, 0, 0, 0, 0], "fragmented control frame"),
        (long_len, "most significant bit"),
        (
            frame(true, OP_CONTINUATION, b"x", None, 7),
            "continuation frame",
        ),
        (
            [frame(false, OP_TEXT, b"a", None, 7), text("b")].concat(),
            "new data frame",
        ),
        (
            [frame(true, OP_CLOSE, &[3, 232], None, 7), text("late")].concat(),
            "after a Close",
        ),
    ];
    for (stream, why) in cases {
        let (err, boundary, ..) = same_in_any_split(&stream);
        let err = err.unwrap_or_else(|| panic!("{stream:?} accepted, expected {why}"));
        assert!(err.0.contains(why), "{stream:?}: {err} (expected {why})");
        assert!(!boundary);
        // The error sticks.
        let mut t = FrameTracker::new();
        assert!(t.feed(&stream).is_err());
        assert_eq!(t.feed(&text("ok")), Err(err));
    }
}

#[test]
fn non_minimal_lengths_are_accepted() {
    let stream = [
        frame(true, OP_TEXT, b"hi", None, 16),
        frame(true, OP_TEXT, b"hi", None, 64),
        frame(true, OP_CLOSE, b"", None, 16),
    ]
    .concat();
    assert_eq!(same_in_any_split(&stream), (None, true, true, 2, 4));
}

#[test]
fn rfc6455_section_5_7_examples() {
    let hello_unmasked: &[u8] = &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    let hello_masked: &[u8] = &[
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let fragmented: &[u8] = &[0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
    let ping: &[u8] = &[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    let pong_masked: &[u8] = &[
        0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(
        hello_masked,
        frame(true, OP_TEXT, b"Hello", Some([0x37, 0xfa, 0x21, 0x3d]), 7)
    );
    let stream = [hello_unmasked, hello_masked, fragmented, ping, pong_masked].concat();
    assert_eq!(same_in_any_split(&stream), (None, true, false, 3, 15));
    let mut t = FrameTracker::new();
    t.feed(&[0x82, 0x7E, 0x01, 0x00]).unwrap();
    t.feed(&[0; 256]).unwrap();
    t.feed(&[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap();
    t.feed(&vec![0; 65536]).unwrap();
    assert_eq!((t.messages(), t.payload_bytes()), (2, 256 + 65536));
}

#[test]
fn close_frame_encoding() {
    // 1000 (normal closure), unmasked: FIN + Close, length 2, code big-endian.
    assert_eq!(close_frame(1000, "", None), [0x88, 0x02, 0x03, 0xe8]);
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let masked = close_frame(1001, "bye", Some(key));
    let mut payload = masked[6..].to_vec();
    apply_mask(&mut payload, key);
    assert_eq!(masked[..6], [0x88, 0x85, 0x37, 0xfa, 0x21, 0x3d]);
    assert_eq!(payload, [0x03, 0xe9, b'b', b'y', b'e']);
    for (reason, mask) in [("", None), ("x".repeat(500).as_str(), Some(key))] {
        let f = close_frame(1011, reason, mask);
        assert_eq!(same_in_any_split(&f), (None, true, true, 0, 0));
    }
}

#[test]
fn close_reason_is_cut_at_a_char_boundary() {
    // 61 two-byte chars = 122 bytes fit beside the code; a 62nd would need 124 + 2 > 125.
    let reason = "é".repeat(80);
    let f = close_frame(1008, &reason, None);
    assert_eq!(f.len(), 2 + 2 + 122);
    assert!(std::str::from_utf8(&f[4..]).is_ok());
    assert_eq!(close_frame(1008, &"a".repeat(200), None).len(), 2 + 125);
}

#[test]
fn only_binary_messages_count_as_binary_payload() {
    // Deepgram-style: audio in binary messages, KeepAlive and CloseStream as text, a
    // fragmented binary message whose continuations stay binary, and a Ping between.
    let stream = [
        frame(true, OP_BINARY, &[0; 300], Some([9, 8, 7, 6]), 16),
        text(r#"{"type":"KeepAlive"}"#),
        frame(false, OP_BINARY, &[1; 10], Some([1, 1, 1, 1]), 7),
        frame(true, OP_PING, b"p", Some([1, 1, 1, 1]), 7),
        frame(true, OP_CONTINUATION, &[2; 5], Some([1, 1, 1, 1]), 7),
        frame(false, OP_TEXT, b"{\"type\":", Some([3, 3, 3, 3]), 7),
        frame(
            true,
            OP_CONTINUATION,
            b"\"CloseStream\"}",
            Some([3, 3, 3, 3]),
            7,
        ),
    ]
    .concat();
    for split in [1, 3, stream.len()] {
        let mut t = FrameTracker::new();
        for piece in stream.chunks(split) {
            t.feed(piece).unwrap();
        }
        assert_eq!(t.messages(), 4);
        assert_eq!(t.payload_bytes(), 300 + 20 + 15 + 22);
        assert_eq!(t.binary_payload_bytes(), 315, "{split}");
    }
}
