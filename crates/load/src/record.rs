//! What a load shard records during a measured window, and how windows of all shards
//! merge: one latency histogram, counts per error class, and a sparse sample of requests.
//!
//! Error classes come from OS error numbers and parse results, never from message text.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::io;

/// Why a request failed. Client-side limits are their own classes so that they can never
/// be mistaken for the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorClass {
    ConnectRefused,
    ConnectTimeout,
    /// ECONNRESET (or EPIPE) on an open connection.
    Reset,
    /// The server closed the connection before the response was complete.
    Closed,
    /// EADDRNOTAVAIL: the client ran out of ephemeral ports for this destination.
    ClientPorts,
    /// EMFILE/ENFILE: the client ran out of file descriptors.
    ClientFds,
    /// No response byte for `--timeout`.
    Timeout,
    MalformedResponse,
    Http4xx,
    Http5xx,
    /// Any other OS error (its errno is counted separately).
    OtherIo,
}

pub const CLASSES: usize = 11;

impl ErrorClass {
    pub const ALL: [ErrorClass; CLASSES] = [
        ErrorClass::ConnectRefused,
        ErrorClass::ConnectTimeout,
        ErrorClass::Reset,
        ErrorClass::Closed,
        ErrorClass::ClientPorts,
        ErrorClass::ClientFds,
        ErrorClass::Timeout,
        ErrorClass::MalformedResponse,
        ErrorClass::Http4xx,
        ErrorClass::Http5xx,
        ErrorClass::OtherIo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::ConnectRefused => "connect_refused",
            ErrorClass::ConnectTimeout => "connect_timeout",
            ErrorClass::Reset => "reset",
            ErrorClass::Closed => "closed_early",
            ErrorClass::ClientPorts => "client_ports_exhausted",
            ErrorClass::ClientFds => "client_fd_limit",
            ErrorClass::Timeout => "timeout",
            ErrorClass::MalformedResponse => "malformed_response",
            ErrorClass::Http4xx => "http_4xx",
            ErrorClass::Http5xx => "http_5xx",
            ErrorClass::OtherIo => "other_io",
        }
    }

    /// The failure says something about the client, not the server.
    pub fn is_client_limit(self) -> bool {
        matches!(self, ErrorClass::ClientPorts | ErrorClass::ClientFds)
    }

    /// Classifies an error from socket(), bind(), connect() or the first write on a new
    /// connection.
    pub fn of_connect(e: &io::Error) -> ErrorClass {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => ErrorClass::ConnectRefused,
            Some(libc::ETIMEDOUT) => ErrorClass::ConnectTimeout,
            Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => ErrorClass::ClientPorts,
            Some(libc::EMFILE | libc::ENFILE) => ErrorClass::ClientFds,
            Some(libc::ECONNRESET | libc::EPIPE) => ErrorClass::Reset,
            Some(_) => ErrorClass::OtherIo,
            None if e.kind() == io::ErrorKind::TimedOut => ErrorClass::ConnectTimeout,
            None => ErrorClass::OtherIo,
        }
    }

    /// Classifies an error while a request or response is in flight.
    pub fn of_exchange(e: &io::Error) -> ErrorClass {
        match e.raw_os_error() {
            Some(libc::ECONNRESET | libc::EPIPE) => ErrorClass::Reset,
            Some(libc::ETIMEDOUT) => ErrorClass::Timeout,
            Some(_) => ErrorClass::OtherIo,
            None if e.kind() == io::ErrorKind::TimedOut => ErrorClass::Timeout,
            None => ErrorClass::OtherIo,
        }
    }

    pub fn of_status(status: u16) -> Option<ErrorClass> {
        match status {
            400..=499 => Some(ErrorClass::Http4xx),
            500..=599 => Some(ErrorClass::Http5xx),
            _ => None,
        }
    }
}

/// One logged request (requests.jsonl).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub unix_us: u64,
    pub latency_us: u64,
    pub status: u16,
    pub error: Option<ErrorClass>,
    pub request_id: u64,
}

/// requests.jsonl rows kept per shard per window, whatever the sampling rate.
const MAX_SAMPLES: usize = 200_000;

/// Counts of one window (one shard, or all shards once merged).
#[derive(Debug, Clone)]
pub struct Record {
    /// Latency of every request that got a complete response (any status), in µs, to
    /// three significant digits.
    pub latency: Histogram<u64>,
    pub ok: u64,
    pub errors: [u64; CLASSES],
    /// errno → count, for `OtherIo`.
    pub other_errnos: BTreeMap<i32, u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub min_us: u64,
    pub max_us: u64,
    pub sum_us: u128,
    pub connections_opened: u64,
    /// Open loop: requests sent later than intended because the VU was still busy.
    pub late_sends: u64,
    pub samples: Vec<Sample>,
}

impl Default for Record {
    fn default() -> Record {
        Record::new()
    }
}

impl Record {
    pub fn new() -> Record {
        Record {
            latency: coregate_runtime::histogram::histogram(3),
            ok: 0,
            errors: [0; CLASSES],
            other_errnos: BTreeMap::new(),
            statuses: BTreeMap::new(),
            min_us: u64::MAX,
            max_us: 0,
            sum_us: 0,
            connections_opened: 0,
            late_sends: 0,
            samples: Vec::new(),
        }
    }

    pub fn failed(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// Complete responses (any status): the latency histogram counts exactly these.
    pub fn responses(&self) -> u64 {
        self.latency.len()
    }

    /// Every attempt: complete responses plus transport failures.
    pub fn total(&self) -> u64 {
        self.ok + self.failed()
    }

    pub fn count(&self, class: ErrorClass) -> u64 {
        self.errors[class as usize]
    }

    pub fn client_limit_failures(&self) -> u64 {
        ErrorClass::ALL
            .iter()
            .filter(|c| c.is_client_limit())
            .map(|&c| self.count(c))
            .sum()
    }

    /// A complete response; 4xx/5xx count as failures of their class but their latency is
    /// still a response latency.
    pub fn response(&mut self, status: u16, latency_us: u64) {
        coregate_runtime::histogram::record(&mut self.latency, latency_us);
        self.min_us = self.min_us.min(latency_us);
        self.max_us = self.max_us.max(latency_us);
        self.sum_us += u128::from(latency_us);
        *self.statuses.entry(status).or_insert(0) += 1;
        match ErrorClass::of_status(status) {
            Some(class) => self.errors[class as usize] += 1,
            None => self.ok += 1,
        }
    }

    pub fn failure(&mut self, class: ErrorClass, errno: Option<i32>) {
        self.errors[class as usize] += 1;
        if class == ErrorClass::OtherIo {
            *self.other_errnos.entry(errno.unwrap_or(0)).or_insert(0) += 1;
        }
    }

    pub fn sample(&mut self, s: Sample) {
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(s);
        }
    }

    pub fn merge(&mut self, other: Record) {
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        for (k, v) in other.other_errnos {
            *self.other_errnos.entry(k).or_insert(0) += v;
        }
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_insert(0) += v;
        }
        self.min_us = self.min_us.min(other.min_us);
        self.max_us = self.max_us.max(other.max_us);
        self.sum_us += other.sum_us;
        self.connections_opened += other.connections_opened;
        self.late_sends += other.late_sends;
        self.samples.extend(other.samples);
    }

    /// Latency at quantile `q` in ms (0 when there were no responses).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.responses() == 0 {
            return 0.0;
        }
        // The exact maximum is kept separately; the histogram's is rounded to its bucket.
        let v = if q >= 1.0 {
            self.max_us
        } else {
            self.latency.value_at_quantile(q).min(self.max_us)
        };
        v as f64 / 1000.0
    }

    pub fn min_ms(&self) -> f64 {
        if self.responses() == 0 {
            0.0
        } else {
            self.min_us as f64 / 1000.0
        }
    }

    pub fn mean_ms(&self) -> f64 {
        if self.responses() == 0 {
            0.0
        } else {
            self.sum_us as f64 / self.responses() as f64 / 1000.0
        }
    }

    /// Error counts by class name, only the classes that occurred.
    pub fn error_map(&self) -> BTreeMap<&'static str, u64> {
        ErrorClass::ALL
            .iter()
            .filter(|&&c| self.count(c) > 0)
            .map(|&c| (c.name(), self.count(c)))
            .collect()
    }

    /// The class with the most failures, if any failed.
    pub fn dominant_error(&self) -> Option<ErrorClass> {
        ErrorClass::ALL
            .iter()
            .copied()
            .filter(|&c| self.count(c) > 0)
            .max_by_key(|&c| self.count(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_errno() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(
            ErrorClass::of_connect(&e(libc::ECONNREFUSED)),
            ErrorClass::ConnectRefused
        );
        assert_eq!(
            ErrorClass::of_connect(&e(libc::EADDRNOTAVAIL)),
            ErrorClass::ClientPorts
        );
        assert_eq!(
            ErrorClass::of_connect(&e(libc::EMFILE)),
            ErrorClass::ClientFds
        );
        assert_eq!(
            ErrorClass::of_connect(&e(libc::ENFILE)),
            ErrorClass::ClientFds
        );
        assert_eq!(
            ErrorClass::of_connect(&io::ErrorKind::TimedOut.into()),
            ErrorClass::ConnectTimeout
        );
        assert_eq!(
            ErrorClass::of_exchange(&e(libc::ECONNRESET)),
            ErrorClass::Reset
        );
        assert_eq!(
            ErrorClass::of_exchange(&io::ErrorKind::TimedOut.into()),
            ErrorClass::Timeout
        );
        assert!(ErrorClass::ClientFds.is_client_limit());
        assert!(!ErrorClass::ConnectRefused.is_client_limit());
    }

    #[test]
    fn merges_and_reports_exact_extremes() {
        let mut a = Record::new();
        a.response(200, 1000);
        a.response(503, 3000);
        a.failure(ErrorClass::OtherIo, Some(113));
        let mut b = Record::new();
        b.response(200, 2_000_123);
        b.failure(ErrorClass::ConnectRefused, None);
        a.merge(b);
        assert_eq!(a.total(), 5);
        assert_eq!(a.ok, 2);
        assert_eq!(a.failed(), 3);
        assert_eq!(a.quantile_ms(1.0), 2000.123);
        assert_eq!(a.min_ms(), 1.0);
        assert_eq!(a.error_map().get("http_5xx"), Some(&1));
        assert_eq!(a.other_errnos.get(&113), Some(&1));
        let p50 = a.quantile_ms(0.5);
        assert!((2.99..=3.01).contains(&p50), "{p50}");
    }
}
