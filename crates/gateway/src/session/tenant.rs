//! The tenant gate of a request on a route: who it is (401/403), whether its budget and
//! limits let it through now (429), and its place in the tenant's counts while it runs.

use super::{Flow, Session};
use crate::generation::Generation;
use crate::tenants::limits::{Admission, Limited};
use crate::tenants::redis::Decision;
use crate::tenants::Refusal;
use coregate_http1::request::RequestHead;

impl Session {
    /// Lets the request through for its tenant (`Ok(None)` with keys off), or answers the
    /// refusal and returns the connection's fate.
    pub(super) async fn tenant_gate(
        &mut self,
        head: &RequestHead,
        config: &Generation,
        route: usize,
    ) -> Result<Option<Admission>, Flow> {
        let buf = self.head_bytes();
        let (t, carrier) = match config.tenants.authenticate(buf, head, &self.headers, route) {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(None),
            Err(r) => {
                if let Refusal::Forbidden { tenant } = r {
                    self.note_tenant(config, tenant, route);
                }
                return Err(self
                    .refuse(head, (r.status(), r.code(), r.message()), None)
                    .await);
            }
        };
        self.facts.tenant.set(Some((t, carrier)));
        self.note_tenant(config, t, route);
        let name = &config.tenants.names[t];
        if let Some(until) = self.shard.out_of_budget(t) {
            // A budget holds the tenant back as a limit does: counted with them.
            self.shard.tenant_limits.borrow().count_limited(t);
            let message = "the tenant's usage budget for this window is used up";
            let retry = crate::tenants::budget::retry_after(until);
            let refused = (429, "budget_exhausted", message);
            return Err(self.refuse(head, refused, Some(retry)).await);
        }
        let limits = &config.tenants.limits[t];
        let limiter = self.shard.tenant_limits.borrow().clone();
        let shared = self.shard.redis_limits.borrow().clone();
        let rate_decided = match shared.filter(|_| limits.rate_per_s > 0.0) {
            None => false,
            Some(r) => match r.take(t, name, limits.rate_per_s, limits.burst) {
                Decision::Admit => true,
                Decision::Local => false,
                Decision::Wait => {
                    limiter.count_limited(t);
                    let l = Limited::Rate { retry_after_s: 1 };
                    return Err(self
                        .refuse(head, (429, l.code(), l.message()), Some(1))
                        .await);
                }
            },
        };
        match limiter.admit(t, limits, head.upgrade, self.started_at, rate_decided) {
            Ok(a) => Ok(Some(a)),
            Err(l) => {
                let refused = (429, l.code(), l.message());
                Err(self.refuse(head, refused, Some(l.retry_after_s())).await)
            }
        }
    }

    /// Names the request's tenant for its log line, and its usage key: a request of a known
    /// tenant is metered under its route whether it is let through or refused (403, 429).
    fn note_tenant(&self, config: &Generation, tenant: usize, route: usize) {
        let (Some(name), Some(r)) = (config.tenants.names.get(tenant), config.routes.get(route))
        else {
            return;
        };
        let logged = self.shard.records_names();
        self.facts.note(logged, &self.facts.tenant_name, name);
        self.facts.note(logged, &self.facts.route, &r.name);
        if let Some(p) = config.providers.list.get(r.provider) {
            self.facts.note(logged, &self.facts.provider, &p.name);
            *self.facts.usage_key.borrow_mut() = Some((name.clone(), p.stat, r.name.clone()));
        }
    }
}
