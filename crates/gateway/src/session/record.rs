//! The bookkeeping of each request on a session: its id and what its log line needs when
//! it begins; its usage, access log line and refusals (401/403/429) when it ends.

use super::{Flow, Session};
use crate::access_log::Entry;
use crate::request_id::RequestId;
use crate::stats::usage::{ExportLine, UsageCounters};
use coregate_http1::reply::{json_error, Reply};
use coregate_http1::request::{RequestHead, Version};
use coregate_http1::HttpError;
use std::time::Instant;

impl Session {
    /// A new request: its id (the client's, if well formed, else a new one) and, with an
    /// access log, a copy of what its line needs from the head.
    pub(super) fn begin_request(&mut self, head: &RequestHead) {
        self.facts.reset();
        let buf = self.wire.rx.buffered();
        let field = |name: &[u8]| {
            self.headers
                .iter()
                .find(|h| buf[h.name.clone()].eq_ignore_ascii_case(name))
                .map(|h| &buf[h.value.clone()])
        };
        let id = field(b"x-request-id")
            .and_then(RequestId::from_client)
            .unwrap_or_else(|| RequestId::generate(&self.shard.ids));
        self.facts.request_id.set(Some(id));
        if let Some(log) = &self.shard.access_log {
            let copy = |dst: &mut Vec<u8>, src: &[u8]| {
                dst.clear();
                dst.extend_from_slice(src);
            };
            copy(&mut self.logged.method, head.method(buf));
            copy(&mut self.logged.path, head.path(buf));
            self.logged.version = match head.version {
                Version::Http10 => "HTTP/1.0",
                Version::Http11 => "HTTP/1.1",
            };
            redact_query_key(&mut self.logged.path);
            if log.combined() {
                self.logged.user_agent = field(b"user-agent").map(<[u8]>::to_vec);
                self.logged.referer = field(b"referer").map(<[u8]>::to_vec);
            }
        }
    }

    /// Meters the request that just ended and writes its access log line. `bytes_out` is
    /// what was written since the last request ended; the response's bytes still queued
    /// (sent with the next flush) count here, not for the next request.
    pub(super) fn end_request(&mut self, bytes_in: u64, bytes_out: u64) {
        let queued = self.wire.tx.buf.len() as u64;
        let bytes_out = (bytes_out + queued).saturating_sub(self.logged_unflushed);
        self.logged_unflushed = queued;
        self.meter(bytes_in, bytes_out);
        self.log_request(bytes_in, bytes_out);
    }

    /// Counts the request in its tenant's usage of its provider and route.
    pub(super) fn meter(&self, bytes_in: u64, bytes_out: u64) {
        let key = self.facts.usage_key.borrow();
        let Some(key) = key.as_ref() else {
            return;
        };
        let one = self.usage_of_request(bytes_in, bytes_out);
        // A WebSocket's audio was counted as it streamed (for budgets): not again.
        let mut rest = one;
        rest.audio_ms = rest
            .audio_ms
            .saturating_sub(self.facts.ws_audio_counted_ms.get());
        self.shard.usage.borrow_mut().entry(key).add(&rest);
        if let Some(export) = &self.shard.usage_export {
            let f = &self.facts;
            let id = f.request_id.get();
            let line = ExportLine {
                request_id: id.as_ref().map_or(b"-", |i| i.as_bytes()),
                tenant: &key.0,
                provider: &f.provider.borrow(),
                route: &key.2,
                status: f.status.get(),
                duration: self.started_at.elapsed(),
                usage: &one,
            };
            export.write_with(|out, now| line.write(out, now));
        }
    }

    /// What the request that just ended used, as one row's worth of counters.
    fn usage_of_request(&self, bytes_in: u64, bytes_out: u64) -> UsageCounters {
        let f = &self.facts;
        let mut c = UsageCounters {
            requests: 1,
            bytes_up: bytes_in,
            bytes_down: bytes_out,
            ..UsageCounters::default()
        };
        c.responses[crate::stats::class_index(f.status.get())] = 1;
        let refused = f.error.get().and_then(crate::stats::refusal_index);
        c.refused = u64::from(refused.is_some());
        if let Some(us) = f.ttfb_us.get() {
            c.ttfb_sum_us = us;
            c.ttfb_count = 1;
        }
        if let Some(m) = f.meter.borrow().as_ref() {
            let m = m.finish();
            c.audio_ms = m.audio_ms;
            c.tts_chars = m.chars;
            c.unmetered_bytes = m.unmetered_bytes;
        }
        if let Some(ws) = f.ws.get() {
            if let Some(rate) = f.ws_audio_rate.get() {
                c.audio_ms += crate::meter::audio_ms(ws.audio_up, rate);
            }
            c.ws_sessions = 1;
            c.ws_duration_ms = self.started_at.elapsed().as_millis() as u64;
            c.ws_messages_up = ws.messages_up;
            c.ws_messages_down = ws.messages_down;
            c.ws_payload_up = ws.payload_up;
            c.ws_payload_down = ws.payload_down;
            c.rt_responses = ws.realtime.responses;
            c.rt_input_tokens = ws.realtime.input_tokens;
            c.rt_output_tokens = ws.realtime.output_tokens;
            c.rt_input_audio_tokens = ws.realtime.input_audio_tokens;
            c.rt_output_audio_tokens = ws.realtime.output_audio_tokens;
        }
        c
    }

    /// Writes the access log line of the request that just ended (if it is sampled).
    pub(super) fn log_request(&self, bytes_in: u64, bytes_out: u64) {
        let Some(log) = &self.shard.access_log else {
            return;
        };
        let f = &self.facts;
        if !log.wants(f.status.get(), f.error.get().is_some()) {
            return;
        }
        let id = f.request_id.get();
        let (provider, route) = (f.provider.borrow(), f.route.borrow());
        fn some(s: &str) -> Option<&str> {
            (!s.is_empty()).then_some(s)
        }
        log.write(&Entry {
            request_id: id.as_ref().map_or(b"-", |i| i.as_bytes()),
            tenant: some(&self.facts.tenant_name.borrow()),
            client: self.peer_ip,
            method: &self.logged.method,
            path: &self.logged.path,
            version: self.logged.version,
            route: some(&route),
            provider: some(&provider),
            upstream: f.upstream.get(),
            status: f.status.get(),
            bytes_in,
            bytes_out,
            duration: self.started_at.elapsed(),
            ttfb: f.ttfb_us.get().map(std::time::Duration::from_micros),
            error: f.error.get(),
            user_agent: self.logged.user_agent.as_deref(),
            referer: self.logged.referer.as_deref(),
        });
    }

    /// Logs a request refused before its head could be read whole (400, 408, 413...).
    pub(super) fn log_refused(&mut self, e: &HttpError) {
        self.logged.method.clear();
        self.logged.path.clear();
        self.logged.method.push(b'-');
        self.logged.path.push(b'-');
        // No head was read: nothing of the connection's previous request may show.
        self.logged.user_agent = None;
        self.logged.referer = None;
        self.facts.error.set(Some(e.code));
        self.started_at = Instant::now();
        let (bytes_in, bytes_out) = self.sync_bytes();
        self.end_request(bytes_in, bytes_out);
    }

    /// Refuses a request before it reaches a provider: 401/403 (tenants) or 429 (limits,
    /// with `Retry-After`), with the JSON error body; counted by reason and, when the
    /// tenant is known, by tenant (its usage key names it).
    pub(super) async fn refuse(
        &mut self,
        head: &RequestHead,
        (status, code, message): (u16, &'static str, &str),
        retry_after_s: Option<u64>,
    ) -> Flow {
        self.facts.error.set(Some(code));
        if let Some(reason) = crate::stats::refusal_index(code) {
            self.shard.stats.borrow_mut().counters.refused[reason] += 1;
            let tenant = self.facts.usage_key.borrow().as_ref().map(|k| k.0.clone());
            self.shard.usage.borrow_mut().count_refused(tenant, reason);
        }
        let body = json_error(status, code, message, None);
        let retry = retry_after_s.map(|s| format!("Retry-After: {s}"));
        let mut extra: Vec<&str> = retry.iter().map(String::as_str).collect();
        if status == 401 {
            let presented = code == crate::tenants::Refusal::UnknownKey.code();
            extra.push(crate::tenants::www_authenticate(presented));
        }
        let reply = Reply {
            status,
            content_type: "application/json",
            body: &body,
            extra: &extra,
        };
        self.answer_locally(head, &reply).await
    }
}

/// `X-Request-Id: <id>\r\n` in `buf` (an id is at most 64 bytes).
pub(super) fn request_id_line<'a>(buf: &'a mut [u8; 96], id: &[u8]) -> &'a [u8] {
    const NAME: &[u8] = b"X-Request-Id: ";
    let end = NAME.len() + id.len();
    buf[..NAME.len()].copy_from_slice(NAME);
    buf[NAME.len()..end].copy_from_slice(id);
    buf[end..end + 2].copy_from_slice(b"\r\n");
    &buf[..end + 2]
}

/// Replaces the value of an `access_token` query parameter (a gateway key) in a logged
/// target: secrets never reach a log line.
fn redact_query_key(target: &mut Vec<u8>) {
    const NAME: &[u8] = b"access_token=";
    let Some(q) = target.iter().position(|&b| b == b'?') else {
        return;
    };
    if !target[q..].windows(NAME.len()).any(|w| w == NAME) {
        return;
    }
    let mut out = target[..=q].to_vec();
    for (i, pair) in target[q + 1..].split(|&b| b == b'&').enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        match pair.strip_prefix(NAME) {
            Some(_) => {
                out.extend_from_slice(NAME);
                out.extend_from_slice(b"[redacted]");
            }
            None => out.extend_from_slice(pair),
        }
    }
    *target = out;
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_query_key_is_redacted_and_the_rest_kept() {
        let mut t = b"/ws?a=1&access_token=sk-secret&b=2".to_vec();
        super::redact_query_key(&mut t);
        assert_eq!(t, b"/ws?a=1&access_token=[redacted]&b=2");
        let mut t = b"/plain".to_vec();
        super::redact_query_key(&mut t);
        assert_eq!(t, b"/plain");
    }
}
