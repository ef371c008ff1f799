//! The WebSocket opening handshake's one computation (RFC 6455 §4.2.2), shared by the mock
//! provider (which answers handshakes) and the load generator (which checks them).

use base64::Engine;

/// RFC 6455 §1.3: appended to the client's key before hashing.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let digest = sha1_smol::Sha1::from(format!("{}{GUID}", key.trim())).digest();
    base64::engine::general_purpose::STANDARD.encode(digest.bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc6455_example() {
        // RFC 6455 §1.3's worked example.
        assert_eq!(
            super::accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
