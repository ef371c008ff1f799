//! Opening connections to provider endpoints: TCP, then TLS when the endpoint is
//! `https://`, each bounded by the provider's `connect_timeout_ms` and each failure
//! classified (refused and reset → 502, timeout → 504, every TLS failure its own `tls_*`).
//!
//! The result is a [`Stream`], plain or TLS: the pool, the forwarder and the tunnel do not
//! know which.

use super::pool::{provider_stats, Endpoint};
use super::providers::Provider;
use crate::shard::Shard;
use crate::stats::UpstreamError;
use coregate_runtime::tls::HandshakeFailure;
use coregate_runtime::wire::Stream;
use glommio::net::TcpStream;
use rustls::pki_types::ServerName;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// TLS to one endpoint: the shard's client config for its provider and the name to send
/// as SNI and to verify.
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

/// Opens a connection to one of `ep`'s current addresses; returns it with that address
/// (a pooled connection remembers it, so that it can be retired when DNS drops it).
pub async fn open(
    shard: &Shard,
    provider: &Provider,
    ep: &Endpoint,
    timeout: Duration,
) -> Result<(Stream, SocketAddr), UpstreamError> {
    // The address a failure happened at, for the provider's failure log line.
    let note = |addr: SocketAddr| provider.failures.at(addr);
    let (tcp, addr) = connect_any(ep, timeout, note).await?;
    let Some(tls) = &ep.tls else {
        return Ok((Stream::new(tcp), addr));
    };
    let started = Instant::now();
    match coregate_runtime::tls::connect(tcp, tls.config.clone(), tls.name.clone(), timeout).await {
        Ok((stream, hs)) => {
            let us = started.elapsed().as_micros() as u64;
            provider_stats(shard, provider.stat, |s| s.handshake(us, hs.resumed));
            Ok((stream, addr))
        }
        Err(e) => {
            note(addr);
            Err(UpstreamError::of_handshake(HandshakeFailure::of(&e)))
        }
    }
}

/// Connects to the endpoint's next address; a refused or failed connect tries the next
/// one, until each was tried once (a name that resolves to `::1` and `127.0.0.1` where the
/// provider listens on one of them still works). A timeout is not retried: the client
/// would wait a connect timeout per address.
/// `note` is told each address a connect failed at.
async fn connect_any(
    ep: &Endpoint,
    timeout: Duration,
    note: impl Fn(SocketAddr),
) -> Result<(TcpStream, SocketAddr), UpstreamError> {
    let mut last = UpstreamError::DnsFailure;
    for _ in 0..ep.addr_count() {
        let Some(addr) = ep.next_addr() else { break };
        match connect_tcp(addr, timeout).await {
            Ok(tcp) => return Ok((tcp, addr)),
            Err(e) => {
                note(addr);
                match e {
                    UpstreamError::ConnectRefused | UpstreamError::ConnectError => last = e,
                    _ => return Err(e),
                }
            }
        }
    }
    Err(last)
}

/// Connects with a timeout and sets TCP_NODELAY.
async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, UpstreamError> {
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
