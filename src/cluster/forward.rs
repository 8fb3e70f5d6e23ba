//! Refresh requests between replicas, over NOTIFY. A replica that does not own a provider's
//! shard asks the owner, and sends the same request again every `RESEND_EVERY` until an
//! answer comes or the caller's deadline passes: while a shard is handed over, or after its
//! holder died, no replica owns it for a moment, and a request nobody owned when it arrived
//! is otherwise lost. The owner serves each request once, however often it arrives.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::Mutex,
    time::Duration,
};

use sqlx::PgPool;
use tokio::{sync::oneshot, time::Instant};

use super::{lock, notify};
use crate::{domain::ProviderKey, store::StoreError};

/// NOTIFY channel on which replicas ask the owner of a provider's shard for a refresh.
pub const REFRESH_CHANNEL: &str = "keyrelay_refresh";

/// NOTIFY channel on which the owner answers a refresh request with the change sequence of
/// the resulting state.
pub const REFRESH_DONE_CHANNEL: &str = "keyrelay_refresh_done";

/// How often an unanswered request is sent again.
const RESEND_EVERY: Duration = Duration::from_millis(500);

/// How long an owner remembers a request it answered, so that a resend that crossed the
/// answer does not fetch again.
const ANSWERED_MEMORY: Duration = Duration::from_secs(5);

/// Why a replica asks the owner of a provider's shard for a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshKind {
    /// An admin asked: fetch now, even if fresh.
    Now,
    /// A verifier asked for a kid the set lacks: the owner's cooldown applies.
    UnknownKid,
}

/// A request for a refresh, as carried by NOTIFY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRequest {
    /// Why.
    pub kind: RefreshKind,
    /// Which provider.
    pub key: ProviderKey,
    /// Identifies the request in the owner's answer, and its resends.
    pub id: u64,
    /// The asking replica's W3C `traceparent`, so the owner's work joins the same trace.
    pub trace_parent: Option<String>,
}

impl RefreshRequest {
    /// `kind/tenant/provider/id/traceparent` (the last part may be empty).
    fn payload(&self) -> String {
        let kind = match self.kind {
            RefreshKind::Now => "n",
            RefreshKind::UnknownKid => "k",
        };
        let key = &self.key;
        let trace = self.trace_parent.as_deref().unwrap_or_default();
        format!(
            "{kind}/{}/{}/{}/{trace}",
            key.tenant().as_str(),
            key.provider().as_str(),
            self.id
        )
    }

    pub(super) fn parse(payload: &str) -> Option<Self> {
        let mut parts = payload.split('/');
        let kind = match parts.next()? {
            "n" => RefreshKind::Now,
            "k" => RefreshKind::UnknownKid,
            _ => return None,
        };
        let key = ProviderKey::parse(parts.next()?, parts.next()?).ok()?;
        let id = parts.next()?.parse().ok()?;
        let trace_parent = parts.next()?;
        let trace_parent = (!trace_parent.is_empty()).then(|| trace_parent.to_owned());
        parts.next().is_none().then_some(Self {
            kind,
            key,
            id,
            trace_parent,
        })
    }
}

/// The W3C `traceparent` of the current span, if it is being traced.
fn current_traceparent() -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    carrier.remove("traceparent")
}

/// The trace context a `traceparent` names.
pub fn context_from_traceparent(traceparent: &str) -> opentelemetry::Context {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier))
}

/// Parses the owner's answer `id/change_seq`.
fn parse_done(payload: &str) -> Option<(u64, u64)> {
    let (id, seq) = payload.split_once('/')?;
    Some((id.parse().ok()?, seq.parse().ok()?))
}

/// Both sides of the requests of one replica.
#[derive(Debug, Default)]
pub(super) struct Forwarding {
    /// This replica's requests awaiting the owner's answer.
    pending: Mutex<HashMap<u64, oneshot::Sender<u64>>>,
    /// Requests this replica serves as the owner: `None` while serving, then when answered.
    served: Mutex<HashMap<u64, Option<Instant>>>,
}

impl Forwarding {
    /// Asks the owner of `key`'s shard for a refresh, again and again until it answers with
    /// the change sequence of the resulting state, or `deadline` (then `None`).
    pub(super) async fn ask(
        &self,
        pool: &PgPool,
        key: &ProviderKey,
        kind: RefreshKind,
        deadline: Instant,
    ) -> Result<Option<u64>, StoreError> {
        let request = RefreshRequest {
            kind,
            key: key.clone(),
            id: rand::random(),
            trace_parent: current_traceparent(),
        };
        let (answer, answered) = oneshot::channel();
        lock(&self.pending).insert(request.id, answer);
        let result = send_until_answered(pool, &request, answered, deadline).await;
        lock(&self.pending).remove(&request.id);
        result
    }

    /// The owner's answer to a request: wakes the caller waiting for it, if it is on this
    /// replica.
    pub(super) fn answered(&self, payload: &str) {
        let Some((id, change_seq)) = parse_done(payload) else {
            tracing::warn!(payload, "ignoring a malformed refresh answer");
            return;
        };
        if let Some(waiting) = lock(&self.pending).remove(&id) {
            let _ = waiting.send(change_seq);
        }
    }

    /// Whether this owner should serve request `id`: not when it is serving it already, or
    /// answered it a moment ago.
    pub(super) fn first_sighting(&self, id: u64) -> bool {
        let now = Instant::now();
        let mut served = lock(&self.served);
        served.retain(|_, answered| answered.is_none_or(|at| now - at < ANSWERED_MEMORY));
        match served.entry(id) {
            Entry::Occupied(_) => false,
            Entry::Vacant(entry) => {
                entry.insert(None);
                true
            }
        }
    }

    /// Request `id` will not be served after all (it was dropped): a resend may be.
    pub(super) fn forget(&self, id: u64) {
        lock(&self.served).remove(&id);
    }

    /// The owner answers request `id` now.
    pub(super) fn answering(&self, id: u64) {
        lock(&self.served).insert(id, Some(Instant::now()));
    }
}

async fn send_until_answered(
    pool: &PgPool,
    request: &RefreshRequest,
    mut answered: oneshot::Receiver<u64>,
    deadline: Instant,
) -> Result<Option<u64>, StoreError> {
    let payload = request.payload();
    let key = &request.key;
    tracing::debug!(provider = %key, "asking the owner of the shard for a refresh");
    loop {
        notify(pool, REFRESH_CHANNEL, &payload).await?;
        let next = (Instant::now() + RESEND_EVERY).min(deadline);
        match tokio::time::timeout_at(next, &mut answered).await {
            Ok(answer) => return Ok(answer.ok()),
            Err(_) if next >= deadline => return Ok(None),
            Err(_) => tracing::debug!(provider = %key, "no owner answered yet; asking again"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_requests_round_trip_and_garbage_is_ignored() {
        let key = ProviderKey::parse("acme", "okta").unwrap();
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned();
        for (kind, trace_parent) in [
            (RefreshKind::Now, None),
            (RefreshKind::UnknownKid, Some(traceparent)),
        ] {
            let request = RefreshRequest {
                kind,
                key: key.clone(),
                id: 99,
                trace_parent,
            };
            assert_eq!(RefreshRequest::parse(&request.payload()), Some(request));
        }
        let garbage = [
            "",
            "n/acme/okta/1",
            "x/acme/okta/1/",
            "n/acme/okta/1//more",
            "k/ACME/okta/1/",
            "n/acme/okta/x/",
        ];
        for payload in garbage {
            assert_eq!(RefreshRequest::parse(payload), None, "{payload}");
        }
        assert_eq!(parse_done("7/42"), Some((7, 42)));
        assert_eq!(parse_done("7"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_owner_serves_a_request_once_however_often_it_is_resent() {
        let forwarding = Forwarding::default();
        assert!(forwarding.first_sighting(1));
        assert!(!forwarding.first_sighting(1), "a resend while serving");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(
            !forwarding.first_sighting(1),
            "still serving after a minute"
        );
        forwarding.answering(1);
        tokio::time::advance(ANSWERED_MEMORY - Duration::from_millis(1)).await;
        assert!(
            !forwarding.first_sighting(1),
            "a resend that crossed the answer"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            forwarding.first_sighting(1),
            "forgotten once the memory ends"
        );
    }

    #[test]
    fn a_dropped_request_is_served_when_resent() {
        let forwarding = Forwarding::default();
        assert!(forwarding.first_sighting(2));
        forwarding.forget(2);
        assert!(forwarding.first_sighting(2));
    }
}
