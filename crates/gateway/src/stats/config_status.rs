//! The config's reload history as the aggregator keeps it: which generation the process
//! serves, how many reloads were applied or refused, and the last outcome (for `/stats`,
//! `/metrics` and an operator's "did my SIGHUP take?").

use super::render::Prom;
use serde_json::{json, Value};
use std::fmt::Write;

/// A reload's outcome, reported by the main thread.
#[derive(Debug, Clone)]
pub enum ReloadEvent {
    /// Generation `number` went to the shards; `restart` names the settings that changed
    /// but need a restart (their running values were kept).
    Applied { number: u64, restart: Vec<String> },
    /// The new config was refused (the message says where and why); nothing changed.
    Refused(String),
}

/// The last reload, for `/stats`.
#[derive(Debug, Clone)]
struct LastReload {
    at: String,
    event: ReloadEvent,
}

#[derive(Debug, Clone)]
pub struct ConfigStatus {
    pub generation: u64,
    pub applied: u64,
    pub refused: u64,
    last: Option<LastReload>,
}

impl Default for ConfigStatus {
    fn default() -> Self {
        ConfigStatus {
            generation: 1,
            applied: 0,
            refused: 0,
            last: None,
        }
    }
}

impl ConfigStatus {
    pub fn record(&mut self, event: ReloadEvent) {
        match &event {
            ReloadEvent::Applied { number, .. } => {
                self.generation = *number;
                self.applied += 1;
            }
            ReloadEvent::Refused(_) => self.refused += 1,
        }
        self.last = Some(LastReload {
            at: coregate_runtime::log::rfc3339(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default(),
            ),
            event,
        });
    }

    /// `shard_generations` are the generations the shards report serving (`None` for a
    /// shard that has not reported yet).
    pub fn json(&self, shard_generations: &[Option<u64>]) -> Value {
        let last = self.last.as_ref().map(|l| match &l.event {
            ReloadEvent::Applied { number, restart } => json!({
                "at": l.at, "result": "applied", "generation": number,
                "needs_restart": restart,
            }),
            ReloadEvent::Refused(error) => json!({
                "at": l.at, "result": "refused", "error": error,
            }),
        });
        json!({
            "generation": self.generation,
            // Every shard switched: each reports the process's generation.
            "applied_by_all_shards": shard_generations
                .iter()
                .all(|g| *g == Some(self.generation)),
            "reloads_applied": self.applied,
            "reloads_refused": self.refused,
            "last_reload": last,
        })
    }

    pub(super) fn metrics(&self, p: &mut Prom) {
        p.family(
            "coregate_config_generation",
            "gauge",
            "The config generation the process serves (1 at start, one more per reload).",
        );
        let _ = writeln!(p.out, "coregate_config_generation {}", self.generation);
        p.family(
            "coregate_config_reloads_total",
            "counter",
            "Config reloads (SIGHUP), applied or refused.",
        );
        p.sample(
            "coregate_config_reloads_total",
            "result=\"applied\"",
            self.applied,
        );
        p.sample(
            "coregate_config_reloads_total",
            "result=\"refused\"",
            self.refused,
        );
    }
}
