//! Emergency revocation on providers: withhold a kid from everything keyrelay serves, or
//! serve it again. Each change is read from the store, applied, and written back only if the
//! row has not changed since, so two replicas revoking at once both land.

use crate::{
    access::{Action, AuditEvent, Origin},
    core::error::Error,
    core::providers::{Providers, new_revision},
    domain::revocation::{RevocationError, RevocationReason, Revocations, RevokedKey},
    domain::{Kid, ProviderKey},
    state::Snapshot,
};

/// Reads and writes one change tries before giving up to a burst of concurrent writes.
const ATTEMPTS: usize = 5;

/// A new revocation list and the revocation it undoes, if any; `None`: nothing to change.
type Edit = Option<(Revocations, Option<RevokedKey>)>;

/// What a revocation change did.
#[derive(Debug)]
pub struct Revised {
    /// The provider afterwards.
    pub snapshot: Snapshot,
    /// Whether anything changed: false when the kid was revoked already.
    pub changed: bool,
}

impl Providers {
    /// Withholds `kid` of a provider from Resolve, WatchKeys and the mirror on every replica,
    /// whatever the identity provider publishes, until reinstated; audited as done by
    /// `origin`. Revoking a kid that is revoked already changes nothing (the first reason
    /// stands); a kid not published yet is withheld as soon as it is.
    pub async fn revoke_key(
        &self,
        key: &ProviderKey,
        kid: &Kid,
        reason: &RevocationReason,
        origin: &Origin,
    ) -> Result<Revised, Error> {
        let revoked = RevokedKey {
            kid: kid.as_str().to_owned(),
            reason: reason.as_str().to_owned(),
            revoked_at: self.now(),
            revoked_by: origin.actor.clone(),
        };
        let revised = self
            .revise(key, origin, Action::RevokeKey, |list| {
                Ok(list.with(revoked.clone())?.map(|list| (list, None)))
            })
            .await?;
        if revised.changed {
            tracing::warn!(provider = %key, kid = kid.as_str(), reason = reason.as_str(), actor = %origin.actor, "key revoked");
        }
        Ok(revised)
    }

    /// Serves a revoked `kid` again, as soon as the held set has it; audited as done by
    /// `origin`.
    pub async fn reinstate_key(
        &self,
        key: &ProviderKey,
        kid: &Kid,
        origin: &Origin,
    ) -> Result<Revised, Error> {
        let revised = self
            .revise(key, origin, Action::ReinstateKey, |list| {
                let was = list.get(kid.as_str()).cloned();
                Ok(Some((list.without(kid)?, was)))
            })
            .await?;
        tracing::warn!(provider = %key, kid = kid.as_str(), actor = %origin.actor, "key reinstated");
        Ok(revised)
    }

    /// Applies `change` to the stored revocation list and writes the result under a new
    /// revision, retrying when the row changes in between.
    async fn revise(
        &self,
        key: &ProviderKey,
        origin: &Origin,
        action: Action,
        change: impl Fn(&Revocations) -> Result<Edit, RevocationError>,
    ) -> Result<Revised, Error> {
        let store = &self.parts.store;
        for _ in 0..ATTEMPTS {
            let record = self.stored(key).await?;
            let revoked = &record.registration.revoked;
            let revision = change(revoked).map_err(|source| Error::Revocation {
                key: key.clone(),
                source,
            })?;
            let Some((list, undone)) = revision else {
                return Ok(Revised {
                    snapshot: self.get(key)?,
                    changed: false,
                });
            };
            let now = self.now();
            let mut event = AuditEvent::provider(now, origin.clone(), action, key);
            event.before = undone.as_ref().map(revocation_json);
            event.after = list
                .keys()
                .iter()
                .find(|added| !revoked.contains(&added.kid))
                .map(revocation_json);
            let mut revised = record.with_revocations(list, new_revision(), now);
            if let Some(change_seq) = store
                .save_revocations(&revised, record.change_seq, &event)
                .await?
            {
                revised.change_seq = change_seq;
                self.parts.cache.apply(revised);
                return Ok(Revised {
                    snapshot: self.get(key)?,
                    changed: true,
                });
            }
        }
        Err(Error::Contended(key.clone()))
    }
}

/// A revocation as the audit log shows it.
fn revocation_json(revoked: &RevokedKey) -> serde_json::Value {
    serde_json::json!({
        "kid": revoked.kid,
        "reason": revoked.reason,
        "revoked_at": revoked.revoked_at.to_rfc3339(),
        "revoked_by": revoked.revoked_by,
    })
}
