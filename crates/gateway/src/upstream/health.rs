//! Passive health of one endpoint on one shard: consecutive failures eject it for a time
//! that doubles with each ejection in a row (up to a maximum); when the time is up, one
//! request probes it (half-open) and decides: success puts it back, failure ejects it again
//! for longer. Only what the shard itself saw counts: no cross-shard state, no probes of
//! its own (each shard learns within `eject_after_failures` requests).

use super::ProviderConfig;
use std::cell::Cell;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Health {
    /// Failures in a row since the last success.
    failures: Cell<u32>,
    /// Ejected until then; `None`: in service.
    until: Cell<Option<Instant>>,
    /// Ejections in a row (the backoff's exponent).
    streak: Cell<u32>,
    /// The ticket of the half-open probe in flight, if one is.
    probe: Cell<Option<u64>>,
    /// Probes started so far: each gets its own ticket.
    probes_started: Cell<u64>,
    /// The active health check says it is down (`upstream::active`): out of rotation
    /// until the check says it is up again, whatever the shard's own requests saw.
    down: Cell<bool>,
}

/// Whether an endpoint may take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Ready,
    /// Its ejection is over: one request may probe it.
    Probe,
    Ejected,
}

impl Health {
    pub fn availability(&self, now: Instant) -> Availability {
        if self.down.get() {
            return Availability::Ejected;
        }
        match self.until.get() {
            None => Availability::Ready,
            Some(t) if now < t || self.probing() => Availability::Ejected,
            Some(_) => Availability::Probe,
        }
    }

    /// The active health check's verdict.
    pub fn set_down(&self, down: bool) {
        self.down.set(down);
    }

    pub fn is_down(&self) -> bool {
        self.down.get()
    }

    /// Ejected, or probing after an ejection: a success now puts it back in service.
    pub fn returning(&self) -> bool {
        self.until.get().is_some()
    }

    /// Ejected by this shard's own requests (not by the active check).
    pub fn is_passively_ejected(&self, now: Instant) -> bool {
        self.until.get().is_some_and(|t| now < t || self.probing())
    }

    fn probing(&self) -> bool {
        self.probe.get().is_some()
    }

    /// The request about to go to this endpoint is its half-open probe; the ticket names
    /// it to [`Health::abandon_probe`].
    pub fn start_probe(&self) -> u64 {
        let ticket = self.probes_started.get().wrapping_add(1);
        self.probes_started.set(ticket);
        self.probe.set(Some(ticket));
        ticket
    }

    /// The probe `ticket` ended without a verdict (the client went away, the response was
    /// cut mid-body, the pool queue was full...): the endpoint stays ejected, and the next
    /// request probes it again. Without this the endpoint would wait for a verdict that
    /// never comes and stay out of service for good. A later probe's ticket is left alone.
    pub fn abandon_probe(&self, ticket: u64) {
        if self.probe.get() == Some(ticket) {
            self.probe.set(None);
        }
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        self.availability(now) == Availability::Ejected
    }

    pub fn success(&self) {
        self.failures.set(0);
        self.until.set(None);
        self.streak.set(0);
        self.probe.set(None);
    }

    /// Counts a failure; returns how long the endpoint is now ejected for, when this
    /// failure ejected it.
    pub fn failure(&self, cfg: &ProviderConfig, now: Instant) -> Option<Duration> {
        if self.until.get().is_some() {
            // Only a failed probe ejects again. A failure while ejected otherwise came from
            // a request picked before the ejection, or sent here because every endpoint is
            // out: it says nothing new.
            if !self.probing() {
                return None;
            }
        } else {
            self.failures.set(self.failures.get() + 1);
            let threshold = cfg.eject_after_failures;
            if threshold == 0 || self.failures.get() < threshold {
                return None;
            }
        }
        self.failures.set(0);
        self.probe.set(None);
        self.streak.set(self.streak.get().saturating_add(1));
        let exponent = self.streak.get().saturating_sub(1).min(20);
        let time = Duration::from_millis(cfg.eject_base_ms.saturating_mul(1 << exponent))
            .min(Duration::from_millis(cfg.eject_max_ms));
        self.until.set(Some(now + time));
        Some(time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_after_the_threshold_backs_off_and_probes_once() {
        let cfg = ProviderConfig {
            eject_after_failures: 3,
            eject_base_ms: 100,
            eject_max_ms: 250,
            ..ProviderConfig::default()
        };
        let h = Health::default();
        let t0 = Instant::now();
        assert_eq!(h.failure(&cfg, t0), None);
        assert_eq!(h.failure(&cfg, t0), None);
        assert_eq!(h.failure(&cfg, t0), Some(Duration::from_millis(100)));
        assert_eq!(h.availability(t0), Availability::Ejected);
        let later = t0 + Duration::from_millis(150);
        assert_eq!(h.availability(later), Availability::Probe);
        let _ = h.start_probe();
        // Only one probe at a time.
        assert_eq!(h.availability(later), Availability::Ejected);
        // A failed probe ejects again, for twice as long (capped).
        assert_eq!(h.failure(&cfg, later), Some(Duration::from_millis(200)));
        // A failure that was no probe (every endpoint out) changes nothing.
        assert_eq!(h.failure(&cfg, later), None);
        let later = later + Duration::from_millis(250);
        let _ = h.start_probe();
        assert_eq!(h.failure(&cfg, later), Some(Duration::from_millis(250)));
        h.success();
        assert_eq!(h.availability(later), Availability::Ready);
    }

    #[test]
    fn a_probe_that_ends_without_a_verdict_lets_the_next_request_probe() {
        let cfg = ProviderConfig {
            eject_after_failures: 1,
            eject_base_ms: 100,
            eject_max_ms: 1_000,
            ..ProviderConfig::default()
        };
        let h = Health::default();
        let t0 = Instant::now();
        assert!(h.failure(&cfg, t0).is_some());
        let later = t0 + Duration::from_millis(150);
        let first = h.start_probe();
        assert_eq!(h.availability(later), Availability::Ejected);
        h.abandon_probe(first);
        // Still out of service, but no longer waiting for the lost probe.
        assert!(h.returning());
        assert_eq!(h.availability(later), Availability::Probe);
        let second = h.start_probe();
        // The first probe's guard, dropped late, does not end the second probe.
        h.abandon_probe(first);
        assert_eq!(h.availability(later), Availability::Ejected);
        h.abandon_probe(second);
        assert_eq!(h.availability(later), Availability::Probe);
    }
}
