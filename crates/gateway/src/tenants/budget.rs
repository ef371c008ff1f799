//! Usage budgets per tenant, per minute and per day, in voice units.
//!
//! Usage is counted on the shards as requests and sessions end (and, for audio streamed
//! over a WebSocket, as the session ends); the aggregator sums it per tenant and, when a
//! window's total reaches a budget, tells every shard the tenant is out until the window
//! ends. A shard then answers the tenant's new requests 429 (`budget_exhausted`, with
//! `Retry-After` to the window's end) and closes its open WebSocket sessions with close code
//! 1008 and a reason. Nothing on the request path asks another core: the shard reads its
//! own flag. Accuracy: a budget can be overrun by what the tenant uses within one stats
//! interval (plus requests already in flight), since the totals travel with the stats.
//! Windows are UTC minutes and UTC days; the aggregator carries each tenant's windows over
//! a reload by name (`stats::tenants`), so a reload does not hand a budget out again.

use super::TenantConfig;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A tenant's budgets (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Budgets {
    pub audio_seconds_per_minute: f64,
    pub audio_seconds_per_day: f64,
    pub tts_chars_per_minute: u64,
    pub tts_chars_per_day: u64,
}

impl Budgets {
    pub fn of(t: &TenantConfig) -> Budgets {
        Budgets {
            audio_seconds_per_minute: t.budget_audio_seconds_per_minute,
            audio_seconds_per_day: t.budget_audio_seconds_per_day,
            tts_chars_per_minute: t.budget_tts_chars_per_minute,
            tts_chars_per_day: t.budget_tts_chars_per_day,
        }
    }

    pub fn any(&self) -> bool {
        *self != Budgets::default()
    }
}

/// A tenant's usage in the units budgets count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    pub audio_ms: u64,
    pub tts_chars: u64,
}

/// One tenant's windows, as the aggregator keeps them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Windows {
    /// The cumulative totals at the start of the current minute and day.
    minute_base: Spent,
    day_base: Spent,
    minute: u64,
    day: u64,
    /// Checked before: a fresh tenant's windows start from nothing spent, not from the
    /// totals of its first check (which may already hold its first requests).
    checked: bool,
}

/// A tenant that is out of budget, until (seconds since the epoch) its window ends.
pub type Exhausted = Option<u64>;

impl Windows {
    /// Folds in the tenant's cumulative totals at `now`; returns until when it is out of
    /// budget, if it is.
    pub fn check(&mut self, total: Spent, budgets: &Budgets, now: SystemTime) -> Exhausted {
        let secs = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let (minute, day) = (secs / 60, secs / 86_400);
        let fresh = !std::mem::replace(&mut self.checked, true);
        if minute != self.minute {
            self.minute = minute;
            if !fresh {
                self.minute_base = total;
            }
        }
        if day != self.day {
            self.day = day;
            if !fresh {
                self.day_base = total;
            }
        }
        let since = |base: Spent| Spent {
            audio_ms: total.audio_ms.saturating_sub(base.audio_ms),
            tts_chars: total.tts_chars.saturating_sub(base.tts_chars),
        };
        let over = |spent: Spent, audio_s: f64, chars: u64| {
            (audio_s > 0.0 && spent.audio_ms as f64 >= audio_s * 1000.0)
                || (chars > 0 && spent.tts_chars >= chars)
        };
        let b = budgets;
        if over(
            since(self.day_base),
            b.audio_seconds_per_day,
            b.tts_chars_per_day,
        ) {
            return Some((day + 1) * 86_400);
        }
        if over(
            since(self.minute_base),
            b.audio_seconds_per_minute,
            b.tts_chars_per_minute,
        ) {
            return Some((minute + 1) * 60);
        }
        None
    }
}

/// Seconds from now until `until` (for `Retry-After`), at least 1.
pub fn retry_after(until: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    until.saturating_sub(now).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_budget_runs_out_and_comes_back_with_the_next_minute() {
        let b = Budgets {
            tts_chars_per_minute: 100,
            ..Budgets::default()
        };
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000 / 60 * 60);
        let mut w = Windows::default();
        let spent = |chars| Spent {
            audio_ms: 0,
            tts_chars: chars,
        };
        assert_eq!(w.check(spent(0), &b, t0), None);
        assert_eq!(w.check(spent(99), &b, t0), None);
        let until = w
            .check(spent(100), &b, t0 + Duration::from_secs(5))
            .unwrap();
        assert_eq!(until, 1_800_000_000 / 60 * 60 + 60);
        // The next minute counts from what was spent by its start.
        assert_eq!(w.check(spent(150), &b, t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn what_a_new_tenant_spent_before_its_first_check_counts() {
        let b = Budgets {
            tts_chars_per_day: 3,
            ..Budgets::default()
        };
        // The aggregator's first look came after the tenant's first request had been
        // counted: that request is still this day's.
        let mut w = Windows::default();
        let spent = Spent {
            audio_ms: 0,
            tts_chars: 5,
        };
        assert!(w.check(spent, &b, SystemTime::now()).is_some());
    }

    #[test]
    fn a_day_budget_of_audio_seconds() {
        let b = Budgets {
            audio_seconds_per_day: 2.0,
            ..Budgets::default()
        };
        let mut w = Windows::default();
        let now = SystemTime::now();
        let audio = |ms| Spent {
            audio_ms: ms,
            tts_chars: 0,
        };
        assert_eq!(w.check(audio(0), &b, now), None);
        assert!(w.check(audio(2000), &b, now).is_some());
    }
}
