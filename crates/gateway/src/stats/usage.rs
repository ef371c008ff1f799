//! Usage metering per tenant × provider × route: counted on the shard as each request or
//! tunnel ends, shipped with the stats, merged by the aggregator for `/usage` and
//! `/metrics`.

use super::render::{escape, Prom};
use crate::tenants::budget::Spent;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

/// What one tenant used of one provider through one route (cumulative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct UsageCounters {
    pub requests: u64,
    /// Of `requests`, those the tenant gate refused (403, 429): they reached no provider.
    pub refused: u64,
    /// Responses by class, 1xx..5xx (the gateway's own errors included).
    pub responses: [u64; 5],
    /// Bytes from the client (request heads and bodies, WebSocket frames up) and to it.
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub ttfb_sum_us: u64,
    pub ttfb_count: u64,
    /// WebSocket sessions that ended, their time, and their data messages and payload
    /// bytes each way (read from frame headers as the tunnel relays them).
    pub ws_sessions: u64,
    pub ws_duration_ms: u64,
    pub ws_messages_up: u64,
    pub ws_messages_down: u64,
    pub ws_payload_up: u64,
    pub ws_payload_down: u64,
    /// Voice units: audio sent for speech-to-text (ms), characters sent for text-to-speech,
    /// and body bytes in no format the meter reads (`meter`).
    pub audio_ms: u64,
    pub tts_chars: u64,
    pub unmetered_bytes: u64,
    /// Realtime sessions: `response.done` events and the tokens they reported.
    pub rt_responses: u64,
    pub rt_input_tokens: u64,
    pub rt_output_tokens: u64,
    pub rt_input_audio_tokens: u64,
    pub rt_output_audio_tokens: u64,
}

impl UsageCounters {
    pub fn add(&mut self, o: &UsageCounters) {
        *self = self.zip(o, u64::wrapping_add);
    }

    fn minus(&self, o: &UsageCounters) -> UsageCounters {
        self.zip(o, u64::saturating_sub)
    }

    /// Every field of `self` and `o` combined by `f` (the one list of the fields).
    fn zip(&self, o: &UsageCounters, f: fn(u64, u64) -> u64) -> UsageCounters {
        UsageCounters {
            requests: f(self.requests, o.requests),
            refused: f(self.refused, o.refused),
            responses: std::array::from_fn(|i| f(self.responses[i], o.responses[i])),
            bytes_up: f(self.bytes_up, o.bytes_up),
            bytes_down: f(self.bytes_down, o.bytes_down),
            ttfb_sum_us: f(self.ttfb_sum_us, o.ttfb_sum_us),
            ttfb_count: f(self.ttfb_count, o.ttfb_count),
            ws_sessions: f(self.ws_sessions, o.ws_sessions),
            ws_duration_ms: f(self.ws_duration_ms, o.ws_duration_ms),
            ws_messages_up: f(self.ws_messages_up, o.ws_messages_up),
            ws_messages_down: f(self.ws_messages_down, o.ws_messages_down),
            ws_payload_up: f(self.ws_payload_up, o.ws_payload_up),
            ws_payload_down: f(self.ws_payload_down, o.ws_payload_down),
            audio_ms: f(self.audio_ms, o.audio_ms),
            tts_chars: f(self.tts_chars, o.tts_chars),
            unmetered_bytes: f(self.unmetered_bytes, o.unmetered_bytes),
            rt_responses: f(self.rt_responses, o.rt_responses),
            rt_input_tokens: f(self.rt_input_tokens, o.rt_input_tokens),
            rt_output_tokens: f(self.rt_output_tokens, o.rt_output_tokens),
            rt_input_audio_tokens: f(self.rt_input_audio_tokens, o.rt_input_audio_tokens),
            rt_output_audio_tokens: f(self.rt_output_audio_tokens, o.rt_output_audio_tokens),
        }
    }
}

/// One line of the usage export (`[usage] export`): a finished request or session.
pub struct ExportLine<'a> {
    pub request_id: &'a [u8],
    pub tenant: &'a str,
    pub provider: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub duration: std::time::Duration,
    pub usage: &'a UsageCounters,
}

impl ExportLine<'_> {
    /// The line as JSON, written straight into `out` (as the access log's lines are).
    pub fn write(&self, out: &mut Vec<u8>, now: std::time::Duration) {
        use crate::access_log::{push_ms, push_str, push_time};
        let u = self.usage;
        out.extend_from_slice(b"{\"time\":\"");
        push_time(out, now);
        out.extend_from_slice(b"\",\"request_id\":");
        push_str(out, Some(self.request_id));
        for (key, v) in [
            ("tenant", self.tenant),
            ("provider", self.provider),
            ("route", self.route),
        ] {
            out.extend_from_slice(format!(",\"{key}\":").as_bytes());
            push_str(out, Some(v.as_bytes()));
        }
        out.extend_from_slice(b",\"duration_ms\":");
        push_ms(out, self.duration);
        out.extend_from_slice(b",\"audio_seconds\":");
        // Milliseconds written as seconds with three decimals (push_ms reads µs as ms).
        push_ms(out, std::time::Duration::from_micros(u.audio_ms));
        let numbers = [
            ("status", u64::from(self.status)),
            ("bytes_up", u.bytes_up),
            ("bytes_down", u.bytes_down),
            ("tts_characters", u.tts_chars),
            ("unmetered_bytes", u.unmetered_bytes),
            ("ws_messages_up", u.ws_messages_up),
            ("ws_messages_down", u.ws_messages_down),
            ("ws_payload_bytes_up", u.ws_payload_up),
            ("ws_payload_bytes_down", u.ws_payload_down),
            ("realtime_responses", u.rt_responses),
            ("realtime_input_tokens", u.rt_input_tokens),
            ("realtime_output_tokens", u.rt_output_tokens),
            ("realtime_input_audio_tokens", u.rt_input_audio_tokens),
            ("realtime_output_audio_tokens", u.rt_output_audio_tokens),
        ];
        for (key, v) in numbers {
            out.extend_from_slice(format!(",\"{key}\":{v}").as_bytes());
        }
        out.extend_from_slice(b"}\n");
    }
}

/// Who used what: the tenant (`-` without keys), the provider's stats slot, the route.
pub type UsageKey = (Rc<str>, usize, Rc<str>);

/// One shipped row: names resolved on the shard.
#[derive(Debug, Clone)]
pub struct UsageRow {
    pub tenant: String,
    pub provider_slot: usize,
    pub route: String,
    pub counters: UsageCounters,
}

/// Requests the tenant gate refused, of one tenant (`-` when the key named none) for one
/// reason (an index in `REFUSAL_REASONS`), cumulative.
#[derive(Debug, Clone)]
pub struct RefusedRow {
    pub tenant: String,
    pub reason: usize,
    pub count: u64,
}

/// A shard's meter.
#[derive(Default)]
pub struct ShardUsage {
    rows: HashMap<UsageKey, UsageCounters>,
    refused: HashMap<(Option<Rc<str>>, usize), u64>,
}

impl ShardUsage {
    /// Counts a refusal of `tenant` (`None`: no tenant known) for `reason`.
    pub fn count_refused(&mut self, tenant: Option<Rc<str>>, reason: usize) {
        *self.refused.entry((tenant, reason)).or_default() += 1;
    }

    pub fn refused_rows(&self) -> Vec<RefusedRow> {
        self.refused
            .iter()
            .map(|((t, reason), count)| RefusedRow {
                tenant: t.as_deref().unwrap_or("-").to_string(),
                reason: *reason,
                count: *count,
            })
            .collect()
    }

    pub fn entry(&mut self, key: &UsageKey) -> &mut UsageCounters {
        self.rows.entry(key.clone()).or_default()
    }

    pub fn rows(&self) -> Vec<UsageRow> {
        self.rows
            .iter()
            .map(|((t, p, r), c)| UsageRow {
                tenant: t.to_string(),
                provider_slot: *p,
                route: r.to_string(),
                counters: *c,
            })
            .collect()
    }
}

type Merged = BTreeMap<(String, String, String), UsageCounters>;

/// The aggregator's side: each shard's latest rows, and the baseline of the last reset.
#[derive(Default)]
pub struct UsageView {
    shards: BTreeMap<usize, Vec<UsageRow>>,
    refused: BTreeMap<usize, Vec<RefusedRow>>,
    baseline: Merged,
}

impl UsageView {
    pub fn record(&mut self, shard: usize, rows: Vec<UsageRow>, refused: Vec<RefusedRow>) {
        self.shards.insert(shard, rows);
        self.refused.insert(shard, refused);
    }

    /// `coregate_refused_total{tenant,reason}`: every shard's refusals, summed.
    fn refused_metrics(&self, p: &mut Prom) {
        let mut sum: BTreeMap<(&str, usize), u64> = BTreeMap::new();
        for r in self.refused.values().flatten() {
            *sum.entry((&r.tenant, r.reason)).or_default() += r.count;
        }
        let metric = "coregate_refused_total";
        p.family(
            metric,
            "counter",
            "Requests the tenant gate refused (401, 403, 429), by tenant (- when the key named none) and reason.",
        );
        for ((tenant, reason), n) in sum {
            let reason = super::REFUSAL_REASONS.get(reason).copied().unwrap_or("-");
            let labels = format!("tenant=\"{}\",reason=\"{reason}\"", escape(tenant));
            p.sample(metric, &labels, n);
        }
    }

    /// Totals since start, by (tenant, provider name, route).
    fn merged(&self, providers: &[String]) -> Merged {
        let mut m = Merged::new();
        for rows in self.shards.values() {
            for r in rows {
                let provider = providers.get(r.provider_slot).cloned().unwrap_or_default();
                let key = (r.tenant.clone(), provider, r.route.clone());
                m.entry(key).or_default().add(&r.counters);
            }
        }
        m
    }

    /// Every tenant's totals since start, in the fields the fleet totals keep.
    pub fn fleet_totals(&self) -> super::fleet::Increments {
        let mut m = super::fleet::Increments::new();
        for rows in self.shards.values() {
            for r in rows {
                let c = &r.counters;
                let t = m.entry(r.tenant.clone()).or_default();
                // The fleet counts the requests let through, as the rate limit does.
                for (field, n) in [
                    ("requests", c.requests.saturating_sub(c.refused)),
                    ("audio_ms", c.audio_ms),
                    ("tts_chars", c.tts_chars),
                    ("bytes_up", c.bytes_up),
                    ("bytes_down", c.bytes_down),
                    ("ws_sessions", c.ws_sessions),
                ] {
                    *t.entry(field).or_default() += n;
                }
            }
        }
        m
    }

    /// Every tenant's totals since start in the units budgets count.
    pub fn spent_by_tenant(&self) -> std::collections::HashMap<String, Spent> {
        let mut m: std::collections::HashMap<String, Spent> = Default::default();
        for rows in self.shards.values() {
            for r in rows {
                let s = m.entry(r.tenant.clone()).or_default();
                s.audio_ms += r.counters.audio_ms;
                s.tts_chars += r.counters.tts_chars;
            }
        }
        m
    }

    /// Totals since the last reset.
    fn window(&self, providers: &[String]) -> Merged {
        let mut m = self.merged(providers);
        for (k, v) in m.iter_mut() {
            if let Some(b) = self.baseline.get(k) {
                *v = v.minus(b);
            }
        }
        m
    }

    /// The `/usage` document; `reset` starts a new window after it.
    pub fn json(&mut self, providers: &[String], reset: bool) -> Value {
        let window = self.window(providers);
        let mut tenants = Map::new();
        for ((tenant, provider, route), c) in &window {
            let t = tenants
                .entry(tenant.clone())
                .or_insert_with(|| json!({"requests": 0, "by_provider": {}}));
            t["requests"] = json!(t["requests"].as_u64().unwrap_or(0) + c.requests);
            let by_provider = &mut t["by_provider"];
            let p = by_provider.as_object_mut().map(|m| {
                m.entry(provider.clone())
                    .or_insert_with(|| json!({"by_route": {}}))
            });
            if let Some(p) = p {
                p["by_route"][route.as_str()] = usage_json(c);
            }
        }
        if reset {
            self.baseline = self.merged(providers);
        }
        json!({"tenants": tenants})
    }

    pub(super) fn metrics(&self, p: &mut Prom, providers: &[String]) {
        type Get = fn(&UsageCounters) -> u64;
        let families: [(&str, &str, Get); 18] = [
            (
                "coregate_usage_realtime_input_tokens_total",
                "Input tokens reported by realtime response.done events.",
                |c| c.rt_input_tokens,
            ),
            (
                "coregate_usage_realtime_output_tokens_total",
                "Output tokens reported by realtime response.done events.",
                |c| c.rt_output_tokens,
            ),
            (
                "coregate_usage_audio_milliseconds_total",
                "Audio sent for speech-to-text (WAV header or query).",
                |c| c.audio_ms,
            ),
            (
                "coregate_usage_tts_characters_total",
                "Characters of text sent for text-to-speech.",
                |c| c.tts_chars,
            ),
            (
                "coregate_usage_requests_total",
                "Requests, per tenant, provider and route.",
                |c| c.requests,
            ),
            (
                "coregate_usage_bytes_up_total",
                "Bytes from the client.",
                |c| c.bytes_up,
            ),
            (
                "coregate_usage_bytes_down_total",
                "Bytes to the client.",
                |c| c.bytes_down,
            ),
            (
                "coregate_usage_ws_sessions_total",
                "WebSocket sessions ended.",
                |c| c.ws_sessions,
            ),
            (
                "coregate_usage_ws_messages_up_total",
                "WebSocket data messages from the client.",
                |c| c.ws_messages_up,
            ),
            (
                "coregate_usage_ws_messages_down_total",
                "WebSocket data messages to the client.",
                |c| c.ws_messages_down,
            ),
            (
                "coregate_usage_ws_milliseconds_total",
                "Time of the WebSocket sessions that ended.",
                |c| c.ws_duration_ms,
            ),
            (
                "coregate_usage_ws_payload_bytes_up_total",
                "WebSocket data payload bytes from the client (frame headers read, not unmasked).",
                |c| c.ws_payload_up,
            ),
            (
                "coregate_usage_ws_payload_bytes_down_total",
                "WebSocket data payload bytes to the client.",
                |c| c.ws_payload_down,
            ),
            (
                "coregate_usage_unmetered_bytes_total",
                "Request body bytes in no format the meter reads (counted as bytes only).",
                |c| c.unmetered_bytes,
            ),
            (
                "coregate_usage_refused_total",
                "Of the requests, those the tenant gate refused (403, 429).",
                |c| c.refused,
            ),
            (
                "coregate_usage_realtime_responses_total",
                "Realtime response.done events.",
                |c| c.rt_responses,
            ),
            (
                "coregate_usage_realtime_input_audio_tokens_total",
                "Of the realtime input tokens, audio tokens.",
                |c| c.rt_input_audio_tokens,
            ),
            (
                "coregate_usage_realtime_output_audio_tokens_total",
                "Of the realtime output tokens, audio tokens.",
                |c| c.rt_output_audio_tokens,
            ),
        ];
        self.refused_metrics(p);
        let merged = self.merged(providers);
        for (metric, help, get) in families {
            p.family(metric, "counter", help);
            for ((t, prov, route), c) in &merged {
                let l = format!(
                    "tenant=\"{}\",provider=\"{}\",route=\"{}\"",
                    escape(t),
                    escape(prov),
                    escape(route)
                );
                p.sample(metric, &l, get(c));
            }
        }
    }
}

fn usage_json(c: &UsageCounters) -> Value {
    json!({
        "requests": c.requests,
        "refused": c.refused,
        "responses": {"1xx": c.responses[0], "2xx": c.responses[1], "3xx": c.responses[2],
                      "4xx": c.responses[3], "5xx": c.responses[4]},
        "bytes_up": c.bytes_up,
        "bytes_down": c.bytes_down,
        "audio_seconds": c.audio_ms as f64 / 1000.0,
        "tts_characters": c.tts_chars,
        "unmetered_bytes": c.unmetered_bytes,
        "ttfb_ms_mean": if c.ttfb_count > 0 { c.ttfb_sum_us as f64 / c.ttfb_count as f64 / 1000.0 } else { 0.0 },
        "websocket": {
            "sessions": c.ws_sessions, "seconds": c.ws_duration_ms as f64 / 1000.0,
            "messages_up": c.ws_messages_up, "messages_down": c.ws_messages_down,
            "payload_bytes_up": c.ws_payload_up, "payload_bytes_down": c.ws_payload_down,
            "realtime": {
                "responses": c.rt_responses, "input_tokens": c.rt_input_tokens,
                "output_tokens": c.rt_output_tokens, "input_audio_tokens": c.rt_input_audio_tokens,
                "output_audio_tokens": c.rt_output_audio_tokens,
            },
        },
    })
}
