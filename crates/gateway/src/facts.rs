//! What one request learned on its way, beyond its head: filled by the provider side (and
//! by local answers), read by the session for the access log line and by the balancer.
//! `Cell`s in an `Rc` the session lends to the exchange: no borrow of the session is held.

use crate::meter::BodyMeter;
use crate::request_id::RequestId;
use crate::stats::usage::UsageKey;
use crate::tenants::Carrier;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;

#[derive(Default)]
pub struct Facts {
    /// The final status the client got (101 for a tunnel).
    pub status: Cell<u16>,
    /// Time to the provider's response head, µs from the request's start.
    pub ttfb_us: Cell<Option<u64>>,
    /// The provider address of the last attempt.
    pub upstream: Cell<Option<SocketAddr>>,
    /// The gateway's error code, when it answered with an error of its own.
    pub error: Cell<Option<&'static str>>,
    /// The provider (the last of a fallback chain) and the route's prefix, for the log;
    /// filled only when there is an access log.
    pub provider: RefCell<String>,
    pub route: RefCell<String>,
    pub request_id: Cell<Option<RequestId>>,
    /// The request's tenant (its index in the generation's table) and where its key was.
    pub tenant: Cell<Option<(usize, Carrier)>>,
    /// The tenant's name, for the log (only when there is one).
    pub tenant_name: RefCell<String>,
    /// Whose usage this request is (tenant, provider slot, route), once it has a route.
    pub usage_key: RefCell<Option<UsageKey>>,
    /// What a WebSocket tunnel carried, when the request became one.
    pub ws: Cell<Option<WsUsage>>,
    /// Voice units of the request body, read as it streams up.
    pub meter: RefCell<Option<BodyMeter>>,
    /// A WebSocket's audio byte rate, when its query names it (Deepgram-style streaming).
    pub ws_audio_rate: Cell<Option<u64>>,
    /// The WebSocket's audio already counted in the usage while it streamed.
    pub ws_audio_counted_ms: Cell<u64>,
}

/// A tunnel's WebSocket traffic: data messages and their payload bytes each way.
#[derive(Debug, Clone, Copy, Default)]
pub struct WsUsage {
    pub messages_up: u64,
    pub messages_down: u64,
    pub payload_up: u64,
    pub payload_down: u64,
    /// Of `payload_up`, the bytes of binary messages: the audio of a streaming STT session.
    pub audio_up: u64,
    /// What the provider's `response.done` events reported (realtime APIs).
    pub realtime: crate::upstream::realtime::RealtimeTotals,
}

impl Facts {
    /// Forgets the previous request's.
    pub fn reset(&self) {
        self.status.set(0);
        self.ttfb_us.set(None);
        self.upstream.set(None);
        self.error.set(None);
        self.provider.borrow_mut().clear();
        self.route.borrow_mut().clear();
        self.request_id.set(None);
        self.tenant.set(None);
        self.tenant_name.borrow_mut().clear();
        self.usage_key.borrow_mut().take();
        self.ws.set(None);
        self.meter.borrow_mut().take();
        self.ws_audio_rate.set(None);
        self.ws_audio_counted_ms.set(0);
    }

    /// Sets `field` to `value` when there is an access log to read it.
    pub fn note(&self, logged: bool, field: &RefCell<String>, value: &str) {
        if logged {
            let mut f = field.borrow_mut();
            f.clear();
            f.push_str(value);
        }
    }
}
