//! Every way an exchange with a provider fails, in one place: the status the client gets,
//! the JSON `code` and message of that answer, and the metric label it is counted under
//! (`/stats` errors and `coregate_upstream_errors_total{kind=...}` use the code).

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Why a provider exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    ConnectRefused,
    ConnectTimeout,
    ConnectError,
    Reset,
    HeadTimeout,
    IdleTimeout,
    TotalTimeout,
    BadResponse,
    QueueTimeout,
    /// The endpoint's name resolved to no address.
    DnsFailure,
    /// The provider's certificate chains to no CA we trust.
    TlsUnknownCa,
    /// The provider's certificate is not valid for its name.
    TlsNameMismatch,
    /// The provider's certificate expired (or is not valid yet).
    TlsCertExpired,
    /// Any other certificate problem.
    TlsBadCertificate,
    /// No common version, cipher or ALPN, an alert, or not TLS at all.
    TlsProtocol,
    TlsTimeout,
    /// Every connection to the endpoint is busy and its wait queue is full.
    QueueFull,
    /// Every endpoint of the provider is ejected or down (used only to move to a fallback
    /// provider; without one, the request tries an endpoint anyway).
    NoHealthyEndpoint,
}

impl UpstreamError {
    /// Every kind, in the order of the per-provider error counters.
    pub const COUNT: usize = 18;
    pub const ALL: [UpstreamError; UpstreamError::COUNT] = [
        UpstreamError::ConnectRefused,
        UpstreamError::ConnectTimeout,
        UpstreamError::ConnectError,
        UpstreamError::Reset,
        UpstreamError::HeadTimeout,
        UpstreamError::IdleTimeout,
        UpstreamError::TotalTimeout,
        UpstreamError::BadResponse,
        UpstreamError::QueueTimeout,
        UpstreamError::DnsFailure,
        UpstreamError::TlsUnknownCa,
        UpstreamError::TlsNameMismatch,
        UpstreamError::TlsCertExpired,
        UpstreamError::TlsBadCertificate,
        UpstreamError::TlsProtocol,
        UpstreamError::TlsTimeout,
        UpstreamError::QueueFull,
        UpstreamError::NoHealthyEndpoint,
    ];

    /// The JSON error `code` and the metric label.
    pub fn label(self) -> &'static str {
        match self {
            UpstreamError::ConnectRefused => "connect_refused",
            UpstreamError::ConnectTimeout => "connect_timeout",
            UpstreamError::ConnectError => "connect_error",
            UpstreamError::Reset => "reset",
            UpstreamError::HeadTimeout => "response_head_timeout",
            UpstreamError::IdleTimeout => "idle_read_timeout",
            UpstreamError::TotalTimeout => "total_timeout",
            UpstreamError::BadResponse => "bad_response",
            UpstreamError::QueueTimeout => "queue_timeout",
            UpstreamError::DnsFailure => "dns_failure",
            UpstreamError::TlsUnknownCa => "tls_unknown_ca",
            UpstreamError::TlsNameMismatch => "tls_name_mismatch",
            UpstreamError::TlsCertExpired => "tls_cert_expired",
            UpstreamError::TlsBadCertificate => "tls_bad_certificate",
            UpstreamError::TlsProtocol => "tls_protocol",
            UpstreamError::TlsTimeout => "tls_handshake_timeout",
            UpstreamError::QueueFull => "queue_full",
            UpstreamError::NoHealthyEndpoint => "no_healthy_endpoint",
        }
    }

    /// The status the gateway answers with: 504 when the provider was too slow, 503 when
    /// no connection to it became free, 502 for everything else it did wrong.
    pub fn status(self) -> u16 {
        match self {
            UpstreamError::ConnectTimeout
            | UpstreamError::HeadTimeout
            | UpstreamError::IdleTimeout
            | UpstreamError::TotalTimeout
            | UpstreamError::TlsTimeout => 504,
            UpstreamError::QueueTimeout
            | UpstreamError::QueueFull
            | UpstreamError::NoHealthyEndpoint => 503,
            UpstreamError::ConnectRefused
            | UpstreamError::ConnectError
            | UpstreamError::Reset
            | UpstreamError::BadResponse
            | UpstreamError::DnsFailure
            | UpstreamError::TlsUnknownCa
            | UpstreamError::TlsNameMismatch
            | UpstreamError::TlsCertExpired
            | UpstreamError::TlsBadCertificate
            | UpstreamError::TlsProtocol => 502,
        }
    }

    /// The message of the JSON error body.
    pub fn message(self) -> &'static str {
        match self {
            UpstreamError::ConnectRefused => "provider refused the connection",
            UpstreamError::ConnectTimeout => "timed out connecting to the provider",
            UpstreamError::ConnectError => "could not connect to the provider",
            UpstreamError::Reset => "provider closed the connection before responding",
            UpstreamError::HeadTimeout => "provider did not start responding in time",
            UpstreamError::IdleTimeout => "provider stalled",
            UpstreamError::TotalTimeout => "provider exchange exceeded its total timeout",
            UpstreamError::BadResponse => "provider sent an invalid response",
            UpstreamError::QueueTimeout => "no provider connection became available in time",
            UpstreamError::DnsFailure => "the provider's host name resolved to no address",
            UpstreamError::TlsUnknownCa => {
                "provider's TLS certificate is not signed by a trusted CA"
            }
            UpstreamError::TlsNameMismatch => {
                "provider's TLS certificate does not match its host name"
            }
            UpstreamError::TlsCertExpired => "provider's TLS certificate expired or not yet valid",
            UpstreamError::TlsBadCertificate => "provider's TLS certificate was rejected",
            UpstreamError::TlsProtocol => "TLS handshake with the provider failed",
            UpstreamError::TlsTimeout => "timed out in the TLS handshake with the provider",
            UpstreamError::QueueFull => "every provider connection is busy and the queue is full",
            UpstreamError::NoHealthyEndpoint => "every endpoint of the provider is out of service",
        }
    }

    /// Failed before a byte of the request left: another endpoint may take the request.
    /// A queue timeout sent nothing either, but it has spent the request's wait: it is
    /// answered, not tried elsewhere.
    pub fn nothing_sent(self) -> bool {
        matches!(
            self,
            UpstreamError::ConnectRefused
                | UpstreamError::ConnectError
                | UpstreamError::DnsFailure
                | UpstreamError::TlsUnknownCa
                | UpstreamError::TlsNameMismatch
                | UpstreamError::TlsCertExpired
                | UpstreamError::TlsBadCertificate
                | UpstreamError::TlsProtocol
                | UpstreamError::QueueFull
                | UpstreamError::NoHealthyEndpoint
        )
    }

    /// Says something about the endpoint's health (a full or slow queue says the shard's
    /// own pool was full, not that the endpoint failed).
    pub fn counts_against_endpoint(self) -> bool {
        !matches!(
            self,
            UpstreamError::QueueTimeout
                | UpstreamError::QueueFull
                | UpstreamError::NoHealthyEndpoint
        )
    }

    /// The kind for a failed TLS handshake with the provider.
    pub fn of_handshake(f: coregate_runtime::tls::HandshakeFailure) -> UpstreamError {
        use coregate_runtime::tls::HandshakeFailure as H;
        match f {
            H::UnknownCa => UpstreamError::TlsUnknownCa,
            H::NameMismatch => UpstreamError::TlsNameMismatch,
            H::Expired => UpstreamError::TlsCertExpired,
            H::BadCertificate => UpstreamError::TlsBadCertificate,
            H::Timeout => UpstreamError::TlsTimeout,
            H::NoCommonProtocol | H::PeerAlert | H::Protocol | H::Closed => {
                UpstreamError::TlsProtocol
            }
        }
    }

    /// The kind to report for a failed read or write on the provider connection:
    /// `timeout_kind` when it timed out, a reset otherwise.
    pub fn of_io(e: &std::io::Error, timeout_kind: UpstreamError) -> UpstreamError {
        match e.kind() {
            std::io::ErrorKind::TimedOut => timeout_kind,
            _ => UpstreamError::Reset,
        }
    }
}

/// Logs a provider's failures from one shard, at most one line per [`FAILURE_LOG_EVERY`]
/// with the number left out, so a 502 storm is visible without flooding stderr.
#[derive(Default)]
pub struct FailureLog {
    last: Cell<Option<Instant>>,
    left_out: Cell<u64>,
    /// The address the failing connection went to, when the connect step knew it.
    addr: Cell<Option<SocketAddr>>,
}

/// The least time between two failure lines of one provider on one shard.
pub const FAILURE_LOG_EVERY: Duration = Duration::from_secs(5);

impl FailureLog {
    /// Remembers the address of a connect that is failing, for the line about it.
    pub fn at(&self, addr: SocketAddr) {
        self.addr.set(Some(addr));
    }

    pub fn record(&self, shard: usize, provider: &str, e: UpstreamError) {
        let addr = self.addr.take();
        let now = Instant::now();
        if self
            .last
            .get()
            .is_some_and(|t| now.duration_since(t) < FAILURE_LOG_EVERY)
        {
            self.left_out.set(self.left_out.get() + 1);
            return;
        }
        self.last.set(Some(now));
        let more = match self.left_out.replace(0) {
            0 => String::new(),
            n => format!(" ({n} more failures since the last line)"),
        };
        let at = addr.map_or_else(String::new, |a| format!(" at {a}"));
        coregate_runtime::log::warn(&format!(
            "shard {shard}: provider {provider:?}{at}: {} {}: {}{more}",
            e.status(),
            e.label(),
            e.message()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::UpstreamError;

    #[test]
    fn every_kind_has_a_distinct_label_and_an_error_status() {
        let mut labels: Vec<_> = UpstreamError::ALL.iter().map(|e| e.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), UpstreamError::ALL.len());
        for e in UpstreamError::ALL {
            assert!(matches!(e.status(), 502..=504), "{e:?}");
            assert!(!e.message().is_empty());
        }
    }
}
