//! Profiles: which steps (VU counts and windows) a run goes through, and when the
//! breaking-point search stops. Pure logic, no I/O, so it is unit-tested directly.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub enum Profile {
    Single {
        vus: usize,
        duration: Duration,
    },
    Scale {
        stages: Vec<usize>,
        stage_duration: Duration,
    },
    BreakingPoint {
        start: usize,
        step: usize,
        /// None: what the client can hold ([`Plan::new`]'s `client_cap`).
        max: Option<usize>,
        iteration: Duration,
        cooldown: Duration,
        /// Error rate (0..=1) at which an iteration breaks.
        threshold: f64,
    },
}

impl Profile {
    pub fn name(&self) -> &'static str {
        match self {
            Profile::Single { .. } => "single",
            Profile::Scale { .. } => "scale",
            Profile::BreakingPoint { .. } => "breaking-point",
        }
    }

    /// The most VUs any step asks for (`client_cap` bounds an open breaking-point search).
    pub fn peak_vus(&self, client_cap: usize) -> usize {
        match self {
            Profile::Single { vus, .. } => *vus,
            Profile::Scale { stages, .. } => stages.iter().copied().max().unwrap_or(0),
            Profile::BreakingPoint { start, max, .. } => max.unwrap_or(client_cap).max(*start),
        }
    }
}

/// One stage (scale, single) or iteration (breaking point).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub index: usize,
    pub vus: usize,
    /// The measured window, after the ramp.
    pub duration: Duration,
    /// Idle pause before this step (connections stay open).
    pub cooldown: Duration,
}

/// How a finished step is judged in a breaking-point search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Server-side errors below the threshold.
    Stable,
    /// Server-side errors (refused, timeouts, resets, 5xx, ...) at or over the threshold.
    Breaking,
    /// The client's own limits (ports, fds) failed that many requests: nothing can be said
    /// of the server at this size.
    ClientLimit,
}

/// Failure rates of a finished step, split by whose limit caused them.
#[derive(Debug, Clone, Copy)]
pub struct StepRates {
    pub server_error_rate: f64,
    pub client_limit_rate: f64,
}

pub struct Plan {
    profile: Profile,
    client_cap: usize,
    next_index: usize,
    done: bool,
}

impl Plan {
    pub fn new(profile: Profile, client_cap: usize) -> Plan {
        Plan {
            profile,
            client_cap,
            next_index: 0,
            done: false,
        }
    }

    pub fn judge(&self, rates: StepRates) -> Verdict {
        let threshold = match self.profile {
            Profile::BreakingPoint { threshold, .. } => threshold,
            _ => return Verdict::Stable,
        };
        if rates.client_limit_rate >= threshold && rates.client_limit_rate > 0.0 {
            Verdict::ClientLimit
        } else if rates.server_error_rate >= threshold && rates.server_error_rate > 0.0 {
            Verdict::Breaking
        } else {
            Verdict::Stable
        }
    }

    /// The next step, given the verdict on the last one (None for the first call).
    pub fn next(&mut self, last: Option<Verdict>) -> Option<Step> {
        if self.done || matches!(last, Some(Verdict::Breaking | Verdict::ClientLimit)) {
            self.done = true;
            return None;
        }
        let i = self.next_index;
        let step = match &self.profile {
            Profile::Single { vus, duration } => (i == 0).then_some(Step {
                index: 0,
                vus: *vus,
                duration: *duration,
                cooldown: Duration::ZERO,
            }),
            Profile::Scale {
                stages,
                stage_duration,
            } => stages.get(i).map(|&vus| Step {
                index: i,
                vus,
                duration: *stage_duration,
                cooldown: Duration::ZERO,
            }),
            Profile::BreakingPoint {
                start,
                step,
                max,
                iteration,
                cooldown,
                ..
            } => {
                // Flags bound start, step and max, so this cannot overflow in practice;
                // saturate anyway rather than wrap.
                let vus = start.saturating_add(step.saturating_mul(i));
                let max = max.unwrap_or(self.client_cap).max(*start);
                (vus <= max).then_some(Step {
                    index: i,
                    vus,
                    duration: *iteration,
                    cooldown: if i == 0 { Duration::ZERO } else { *cooldown },
                })
            }
        };
        self.next_index += 1;
        self.done = step.is_none();
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bp(max: Option<usize>) -> Plan {
        Plan::new(
            Profile::BreakingPoint {
                start: 100,
                step: 50,
                max,
                iteration: Duration::from_secs(1),
                cooldown: Duration::from_secs(2),
                threshold: 0.05,
            },
            220,
        )
    }

    fn rates(server: f64, client: f64) -> StepRates {
        StepRates {
            server_error_rate: server,
            client_limit_rate: client,
        }
    }

    #[test]
    fn breaking_point_stops_at_threshold() {
        let mut p = bp(None);
        let s0 = p.next(None).unwrap();
        assert_eq!((s0.vus, s0.cooldown), (100, Duration::ZERO));
        assert_eq!(p.judge(rates(0.01, 0.0)), Verdict::Stable);
        let s1 = p.next(Some(Verdict::Stable)).unwrap();
        assert_eq!((s1.vus, s1.cooldown), (150, Duration::from_secs(2)));
        assert_eq!(p.judge(rates(0.05, 0.0)), Verdict::Breaking);
        assert!(p.next(Some(Verdict::Breaking)).is_none());
        assert!(p.next(Some(Verdict::Stable)).is_none());
    }

    #[test]
    fn breaking_point_bounded_by_client_cap_and_client_limits() {
        let mut p = bp(None);
        let mut vus = vec![];
        let mut last = None;
        while let Some(s) = p.next(last) {
            vus.push(s.vus);
            last = Some(Verdict::Stable);
        }
        assert_eq!(vus, vec![100, 150, 200]);
        let p = bp(Some(1000));
        assert_eq!(p.judge(rates(0.5, 0.2)), Verdict::ClientLimit);
    }

    #[test]
    fn scale_and_single() {
        let mut p = Plan::new(
            Profile::Scale {
                stages: vec![10, 20],
                stage_duration: Duration::from_secs(3),
            },
            100,
        );
        assert_eq!(p.next(None).unwrap().vus, 10);
        assert_eq!(p.judge(rates(1.0, 1.0)), Verdict::Stable);
        assert_eq!(p.next(Some(Verdict::Stable)).unwrap().vus, 20);
        assert!(p.next(Some(Verdict::Stable)).is_none());
        let mut p = Plan::new(
            Profile::Single {
                vus: 5,
                duration: Duration::from_secs(1),
            },
            100,
        );
        assert_eq!(p.next(None).unwrap().vus, 5);
        assert!(p.next(Some(Verdict::Stable)).is_none());
    }
}
