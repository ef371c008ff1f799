//! Request ids: the client's `X-Request-Id` when it is well formed, otherwise one made
//! here; sent to the provider, returned to the client, and written in the access log.

use std::cell::Cell;

/// The longest client id kept (a UUID is 36); longer ones are replaced.
const MAX_LEN: usize = 64;

/// A request id, on the stack.
#[derive(Clone, Copy)]
pub struct RequestId {
    bytes: [u8; MAX_LEN],
    len: u8,
}

impl RequestId {
    /// The client's id, if it is 1 to 64 characters of letters, digits and `-_.:`
    /// (anything else could split a header or a log line, or be used to forge one).
    pub fn from_client(value: &[u8]) -> Option<RequestId> {
        let ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':');
        if value.is_empty() || value.len() > MAX_LEN || !value.iter().all(ok) {
            return None;
        }
        let mut bytes = [0; MAX_LEN];
        bytes[..value.len()].copy_from_slice(value);
        Some(RequestId {
            bytes,
            len: value.len() as u8,
        })
    }

    /// A new id: 32 hex digits (128 bits) from the shard's generator.
    pub fn generate(rng: &IdGenerator) -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut bytes = [0; MAX_LEN];
        for (i, word) in [rng.next(), rng.next()].into_iter().enumerate() {
            for j in 0..16 {
                bytes[i * 16 + j] = HEX[((word >> (60 - 4 * j)) & 0xF) as usize];
            }
        }
        RequestId { bytes, len: 32 }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A shard's id generator: xorshift64* seeded from the clock, the shard and the process, so
/// that ids from different shards, processes and restarts do not repeat in practice. Ids
/// are for correlation, not secrets: they need not be unpredictable.
pub struct IdGenerator(Cell<u64>);

impl IdGenerator {
    pub fn new(shard: usize) -> IdGenerator {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ ((shard as u64 + 1) << 48);
        IdGenerator(Cell::new(seed | 1))
    }

    fn next(&self) -> u64 {
        let mut x = self.0.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_only_when_harmless() {
        let id = RequestId::from_client(b"6f1c0a3e-1b2c-4d5e-8f90-a1b2c3d4e5f6").unwrap();
        assert_eq!(id.as_bytes(), b"6f1c0a3e-1b2c-4d5e-8f90-a1b2c3d4e5f6");
        for bad in [&b""[..], b"a b", b"x\"y", b"a\r\nb", &[b'a'; 65]] {
            assert!(RequestId::from_client(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_are_32_hex_digits_and_differ() {
        let g = IdGenerator::new(0);
        let (a, b) = (RequestId::generate(&g), RequestId::generate(&g));
        assert_eq!(a.as_bytes().len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(a.as_bytes(), b.as_bytes());
    }
}
