//! Opening connections to provider endpoints.
//!
//! Plain TCP today. TLS will wrap the stream here, behind the same `UpStream` type, so the
//! pool and the forwarder do not change when it is added.

use crate::stats::UpstreamError;
use glommio::net::TcpStream;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Connects with a timeout and sets TCP_NODELAY; errors are classified for stats and for
/// the status the client gets (refused → 502, timeout → 504).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    match TcpStream::connect_timeout(addr, timeout).await {
        Ok(s) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Err(e) => {
            let e: io::Error = e.into();
            Err(classify_connect_error(&e))
        }
    }
}

pub fn classify_connect_error(e: &io::Error) -> UpstreamError {
    match (e.raw_os_error(), e.kind()) {
        (Some(libc::ECONNREFUSED), _) | (_, io::ErrorKind::ConnectionRefused) => {
            UpstreamError::ConnectRefused
        }
        (Some(libc::ETIMEDOUT), _) | (_, io::ErrorKind::TimedOut) => UpstreamError::ConnectTimeout,
        _ => UpstreamError::ConnectError,
    }
}
