//! Keeps a WatchKeys stream within its caller's access: the stream ends as soon as the
//! caller's token is revoked or expires, or a tenant it selects starts requiring a token the
//! caller lacks. The client reconnects and sees what it may see now.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::Status;

use crate::{
    access::{AccessRegistry, Principal},
    api::encoded::EncodedEvent,
    clock::{Clock, sleep_until_due},
    core::error::{Error, StreamEnd},
    domain::TenantId,
};

/// What a stream was allowed when it opened.
pub struct WatchAccess {
    /// The registry to re-check against.
    pub registry: Arc<AccessRegistry>,
    /// Time for token expiry.
    pub clock: Arc<dyn Clock>,
    /// The caller, if it presented a token.
    pub caller: Option<Principal>,
    /// Every tenant the stream selects (all readable when it opened).
    pub tenants: Box<[TenantId]>,
}

impl WatchAccess {
    /// Passes `events` on until access is lost, then ends with the reason.
    pub fn guard(
        self,
        events: impl Stream<Item = Result<EncodedEvent, Status>> + Send + 'static,
    ) -> impl Stream<Item = Result<EncodedEvent, Status>> + Send + 'static {
        let lost = Box::pin(self.lost());
        futures::stream::unfold(
            (Box::pin(events), Some(lost)),
            |(mut events, lost)| async move {
                let mut lost = lost?;
                tokio::select! {
                    event = events.next() => event.map(|event| (event, (events, Some(lost)))),
                    status = &mut lost => Some((Err(status), (events, None))),
                }
            },
        )
    }

    /// Returns once the caller may no longer see what the stream selects.
    async fn lost(self) -> Status {
        let mut changes = self.registry.changes();
        let expiry = self.caller.as_ref().and_then(|c| self.registry.expiry(c));
        loop {
            let expired = sleep_until_due(&*self.clock, expiry);
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                () = expired => {}
            }
            if let Some(status) = self.check() {
                return status;
            }
        }
    }

    fn check(&self) -> Option<Status> {
        let caller = self.caller.as_ref();
        if caller.is_some_and(|c| !self.registry.still_accepts(c, self.clock.now())) {
            return Some(Error::from(StreamEnd::TokenLost).into());
        }
        let readable = |tenant: &TenantId| self.registry.may_read(caller, tenant);
        (!self.tenants.iter().all(readable)).then(|| Error::from(StreamEnd::AccessChanged).into())
    }
}
