//! The `providers` row and its conversion to and from `ProviderRecord`. Reading never trusts
//! a row: one that cannot be read whole affects its own provider only. An unreadable
//! registration (names, URL, policy) leaves the row out, since nothing about it can be served
//! or fetched safely; an unreadable key set quarantines the provider (no keys, FAILING, fetched
//! again at once, its version carried on); unreadable validators are dropped. Each is
//! reported through `UnreadableRows`. An unreadable revocation list counts as an unreadable
//! registration: serving nothing is safer than serving a key an administrator revoked.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Decode, FromRow, Row, Type};

use super::{
    StoreError, discovery,
    sql::Arg,
    unreadable::{RowPart, UnreadableRows},
};
use crate::{
    domain::key_set::{KeySetDocument, SkippedKey},
    domain::revocation::{Revocations, RevokedKey},
    domain::{Issuer, JwksUrl, KeySource, PolicyOverrides, ProviderKey},
    state::record::{
        CurrentKeys, ProviderRecord, Published, RefreshStatus, Registration, Validators, published,
    },
};

/// A `providers` row as read from the database, not yet trusted.
#[derive(Debug)]
pub struct StoredRow {
    /// The registration columns.
    pub registration: RegistrationColumns,
    /// The columns a refresh writes, or why the database could not decode them.
    pub refresh: Result<RefreshColumns, UndecodedRefresh>,
}

/// The registration columns of `providers`, in the portable types both backends decode.
#[derive(Debug, Clone, FromRow)]
pub struct RegistrationColumns {
    /// Tenant identifier.
    pub tenant: String,
    /// Provider identifier.
    pub provider: String,
    /// The JWKS URL.
    pub jwks_url: String,
    /// JSON of the policy overrides.
    pub policy: String,
    /// Registration revision.
    pub revision: i64,
    /// When registered.
    pub created_at: DateTime<Utc>,
    /// When last re-registered, or its revocations last changed.
    pub updated_at: DateTime<Utc>,
    /// JSON of the revoked keys; NULL when none are.
    pub revoked_keys: Option<String>,
    /// The issuer, for a provider registered by issuer (`jwks_url` is then empty).
    pub issuer: Option<String>,
    /// Whether its key sets are pushed (`jwks_url` is then empty).
    pub pushed: bool,
    /// Change sequence of the row's state.
    pub change_seq: i64,
}

/// The columns a refresh writes: key set, validators and status.
#[derive(Debug, Default, FromRow)]
pub struct RefreshColumns {
    /// Key set version; 0 before the first good fetch.
    pub version: i64,
    /// The sanitized key set.
    pub jwks_json: Option<Vec<u8>>,
    /// ETag validator.
    pub etag: Option<String>,
    /// Last-Modified validator.
    pub last_modified: Option<String>,
    /// JSON of the HTTP cache policy.
    pub cache_policy: Option<String>,
    /// When the keys were last confirmed.
    pub fetched_at: Option<DateTime<Utc>>,
    /// Until when they are fresh.
    pub fresh_until: Option<DateTime<Utc>>,
    /// When the last fetch was attempted.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub last_error: Option<String>,
    /// Failures since the last success.
    pub consecutive_failures: i64,
    /// When the next refresh is due.
    pub next_refresh_at: Option<DateTime<Utc>>,
    /// JSON of the keys left out of the set.
    pub skipped_keys: Option<String>,
    /// JSON of the discovery state, for a provider registered by issuer.
    pub discovery: Option<String>,
}

/// Refresh columns the database driver could not decode (a timestamp that is no timestamp,
/// say), and the version, if that column alone still decodes.
#[derive(Debug)]
pub struct UndecodedRefresh {
    /// The `version` column, 0 when unreadable too.
    pub version: i64,
    /// The driver's error.
    pub reason: String,
}

impl RefreshColumns {
    /// The refresh columns of `record`, to write.
    pub fn from_record(record: &ProviderRecord) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            key: record.registration.key.to_string(),
            reason,
        };
        let cache_policy = record
            .validators
            .cached_response
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|err| corrupt(format!("cache policy: {err}")))?;
        let keys = record.keys.as_ref();
        let skipped_keys = keys
            .filter(|keys| !keys.skipped.is_empty())
            .map(|keys| serde_json::to_string(&keys.skipped))
            .transpose()
            .map_err(|err| corrupt(format!("skipped keys: {err}")))?;
        let discovery = record
            .discovery
            .as_deref()
            .map(discovery::to_json)
            .transpose()
            .map_err(corrupt)?;
        Ok(Self {
            version: i64::try_from(record.version()).map_err(|err| corrupt(err.to_string()))?,
            jwks_json: keys.map(|k| k.fetched.json().to_vec()),
            etag: record.validators.etag.clone(),
            last_modified: record.validators.last_modified.clone(),
            cache_policy,
            fetched_at: keys.map(|k| k.fetched_at),
            fresh_until: keys.map(|k| k.fresh_until),
            last_attempt_at: record.status.last_attempt_at,
            last_error: record.status.last_error.clone(),
            consecutive_failures: i64::from(record.status.consecutive_failures),
            next_refresh_at: record.status.next_refresh_at,
            skipped_keys,
            discovery,
        })
    }

    /// The columns as the parameters `$4` to `$16` of a refresh write.
    pub(super) fn args(&self) -> [Arg<'_>; 13] {
        [
            Arg::int(self.version),
            Arg::Bytes(self.jwks_json.as_deref()),
            Arg::Text(self.etag.as_deref()),
            Arg::Text(self.last_modified.as_deref()),
            Arg::Text(self.cache_policy.as_deref()),
            Arg::Time(self.fetched_at),
            Arg::Time(self.fresh_until),
            Arg::Time(self.last_attempt_at),
            Arg::Text(self.last_error.as_deref()),
            Arg::int(self.consecutive_failures),
            Arg::Time(self.next_refresh_at),
            Arg::Text(self.skipped_keys.as_deref()),
            Arg::Text(self.discovery.as_deref()),
        ]
    }
}

/// Decodes one database row; `None` (reported) when it cannot be read at all. A row the
/// driver cannot decode affects that row only.
pub(super) fn decode_row<R>(row: &R, unreadable: &UnreadableRows) -> Option<ProviderRecord>
where
    R: Row,
    for<'r> RegistrationColumns: FromRow<'r, R>,
    for<'r> RefreshColumns: FromRow<'r, R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> &'r str: ColumnIndex<R>,
{
    StoredRow::decode(row, unreadable)?.into_record(unreadable)
}

impl StoredRow {
    /// Splits a database row into its column groups; `None` (reported) when even the
    /// registration columns cannot be decoded.
    pub(super) fn decode<R>(row: &R, unreadable: &UnreadableRows) -> Option<Self>
    where
        R: Row,
        for<'r> RegistrationColumns: FromRow<'r, R>,
        for<'r> RefreshColumns: FromRow<'r, R>,
        for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
        for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
        for<'r> &'r str: ColumnIndex<R>,
    {
        let registration = match RegistrationColumns::from_row(row) {
            Ok(registration) => registration,
            Err(err) => {
                let name = |column| row.try_get::<String, _>(column).unwrap_or_default();
                let key = format!("{}/{}", name("tenant"), name("provider"));
                unreadable.report(&key, RowPart::Registration, &err.to_string());
                return None;
            }
        };
        let refresh = RefreshColumns::from_row(row).map_err(|err| UndecodedRefresh {
            version: row.try_get("version").unwrap_or_default(),
            reason: err.to_string(),
        });
        Some(Self {
            registration,
            refresh,
        })
    }

    /// Rebuilds the record, or `None` when the registration itself is unreadable. Damage is
    /// reported to `unreadable`. Stored URLs were checked when registered; they are not
    /// re-checked against today's egress rules here (the fetcher re-checks every hop).
    pub fn into_record(self, unreadable: &UnreadableRows) -> Option<ProviderRecord> {
        let columns = self.registration;
        let name = format!("{}/{}", columns.tenant, columns.provider);
        let change_seq = u64::try_from(columns.change_seq).unwrap_or_default();
        let registration = match registration(columns) {
            Ok(registration) => registration,
            Err(reason) => {
                unreadable.report(&name, RowPart::Registration, &reason);
                return None;
            }
        };
        let mut record = ProviderRecord::new(registration);
        record.change_seq = change_seq;
        match self.refresh {
            Ok(columns) => restore_refresh(&mut record, columns, &name, unreadable),
            Err(undecoded) => {
                let reason = format!("refresh state: {}", undecoded.reason);
                unreadable.report(&name, RowPart::KeySet, &reason);
                quarantine(&mut record, stored_version(undecoded.version), &reason);
            }
        }
        Some(record)
    }
}

fn registration(columns: RegistrationColumns) -> Result<Registration, String> {
    let key = ProviderKey::parse(&columns.tenant, &columns.provider).map_err(|e| e.to_string())?;
    let source = match (&columns.issuer, columns.pushed) {
        (_, true) => KeySource::Pushed,
        (Some(issuer), false) => {
            KeySource::Issuer(Issuer::parse_stored(issuer).map_err(|e| e.to_string())?)
        }
        (None, false) => {
            KeySource::JwksUrl(JwksUrl::parse_stored(&columns.jwks_url).map_err(|e| e.to_string())?)
        }
    };
    let overrides = serde_json::from_str::<PolicyOverrides>(&columns.policy)
        .map_err(|e| format!("policy: {e}"))?
        .shared();
    let revoked = revocations(columns.revoked_keys.as_deref())?;
    Ok(Registration {
        key,
        source,
        overrides,
        revoked,
        revision: columns.revision,
        created_at: columns.created_at,
        updated_at: columns.updated_at,
    })
}

/// Restores key set, validators and status into a freshly built record.
fn restore_refresh(
    record: &mut ProviderRecord,
    columns: RefreshColumns,
    name: &str,
    unreadable: &UnreadableRows,
) {
    record.status = RefreshStatus {
        last_attempt_at: columns.last_attempt_at,
        last_error: columns.last_error.clone(),
        consecutive_failures: u32::try_from(columns.consecutive_failures).unwrap_or(u32::MAX),
        next_refresh_at: columns.next_refresh_at,
    };
    match current_keys(&columns, &record.registration) {
        Ok(Some(keys)) => record.keys = Some(keys),
        Ok(None) => record.dropped_version = stored_version(columns.version),
        Err(reason) => {
            unreadable.report(name, RowPart::KeySet, &reason);
            quarantine(record, stored_version(columns.version), &reason);
            return;
        }
    }
    match validators(&columns) {
        Ok(validators) => record.validators = validators,
        Err(reason) => {
            unreadable.report(name, RowPart::Validators, &reason);
            record.status.next_refresh_at = None;
        }
    }
    if let Some(keys) = &mut record.keys {
        match skipped_keys(columns.skipped_keys.as_deref()) {
            Ok(skipped) => keys.skipped = skipped,
            Err(reason) => unreadable.report(name, RowPart::SkippedKeys, &reason),
        }
    }
    if let (Some(held), Some(json)) = (&mut record.discovery, columns.discovery.as_deref()) {
        match discovery::from_json(json) {
            Ok(restored) => **held = restored,
            Err(reason) => {
                unreadable.report(name, RowPart::Discovery, &reason);
                record.status.next_refresh_at = None;
            }
        }
    }
}

/// The stored key set: `None` when none is held (never fetched, or dropped earlier).
fn current_keys(
    columns: &RefreshColumns,
    registration: &Registration,
) -> Result<Option<CurrentKeys>, String> {
    let version = u64::try_from(columns.version)
        .map_err(|_| format!("version {} is negative", columns.version))?;
    let Some(json) = &columns.jwks_json else {
        return Ok(None);
    };
    if version == 0 {
        return Ok(None);
    }
    let (Some(fetched_at), Some(fresh_until)) = (columns.fetched_at, columns.fresh_until) else {
        return Err("key set has no fetched_at or fresh_until".into());
    };
    let parsed = KeySetDocument::parse(json).map_err(|e| format!("key set: {e}"))?;
    let fetched = Arc::new(parsed.document);
    let Published { document, withheld } = published(&fetched, registration, fetched_at);
    Ok(Some(CurrentKeys {
        version,
        document,
        fetched,
        fetched_at,
        fresh_until,
        skipped: SkippedKey::shared_list(Vec::new()),
        withheld,
    }))
}

fn validators(columns: &RefreshColumns) -> Result<Validators, String> {
    let cached_response = columns
        .cache_policy
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| format!("cache policy: {e}"))?;
    Ok(Validators {
        etag: columns.etag.clone(),
        last_modified: columns.last_modified.clone(),
        cached_response,
    })
}

/// The revoked keys as stored (NULL or a JSON list).
pub(super) fn revocations(json: Option<&str>) -> Result<Revocations, String> {
    let Some(json) = json else {
        return Ok(Revocations::default());
    };
    serde_json::from_str::<Vec<RevokedKey>>(json)
        .map(Revocations::from_stored)
        .map_err(|e| format!("revoked keys: {e}"))
}

/// The revoked keys to store: NULL when none are.
pub(super) fn revocations_json(revoked: &Revocations) -> Result<Option<String>, serde_json::Error> {
    if revoked.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(revoked.keys()).map(Some)
}

fn skipped_keys(json: Option<&str>) -> Result<Arc<[SkippedKey]>, String> {
    let Some(json) = json else {
        return Ok(SkippedKey::shared_list(Vec::new()));
    };
    serde_json::from_str::<Vec<SkippedKey>>(json)
        .map(SkippedKey::shared_list)
        .map_err(|e| format!("skipped keys: {e}"))
}

/// Holds no keys for the provider, says why in its status and has it fetched at once, as if
/// it had never been fetched, continuing from `version`. The first good fetch recovers it.
fn quarantine(record: &mut ProviderRecord, version: u64, reason: &str) {
    record.keys = None;
    record.validators = Validators::default();
    record.dropped_version = version;
    record.status.last_error = Some(format!(
        "stored key set is unreadable ({reason}); fetching it again"
    ));
    record.status.next_refresh_at = None;
}

fn stored_version(version: i64) -> u64 {
    u64::try_from(version).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

    /// A stored row of a provider at version 4 holding one key, with validators.
    fn row() -> StoredRow {
        let now = Utc::now();
        StoredRow {
            registration: RegistrationColumns {
                tenant: "acme".into(),
                provider: "okta".into(),
                jwks_url: "https://idp.example.com/jwks".into(),
                policy: "{}".into(),
                revision: 1,
                created_at: now,
                updated_at: now,
                revoked_keys: None,
                issuer: None,
                pushed: false,
                change_seq: 9,
            },
            refresh: Ok(RefreshColumns {
                version: 4,
                jwks_json: Some(JWKS.as_bytes().to_vec()),
                etag: Some("\"e\"".into()),
                fetched_at: Some(now),
                fresh_until: Some(now + chrono::Duration::seconds(300)),
                last_attempt_at: Some(now),
                next_refresh_at: Some(now + chrono::Duration::seconds(270)),
                skipped_keys: Some(
                    r#"[{"kid":"pq","reason":{"kind":"unsupported_key_type","value":"AKP"}}]"#
                        .into(),
                ),
                ..RefreshColumns::default()
            }),
        }
    }

    fn refresh(row: &mut StoredRow) -> &mut RefreshColumns {
        row.refresh.as_mut().expect("decoded refresh columns")
    }

    fn read(row: StoredRow) -> (Option<ProviderRecord>, [(RowPart, u64); RowPart::ALL.len()]) {
        let unreadable = UnreadableRows::default();
        let record = row.into_record(&unreadable);
        (record, unreadable.counts())
    }

    fn count(counts: &[(RowPart, u64); RowPart::ALL.len()], part: RowPart) -> u64 {
        counts
            .iter()
            .find(|(p, _)| *p == part)
            .map_or(0, |(_, n)| *n)
    }

    #[test]
    fn a_good_row_reads_back_whole_and_reports_nothing() {
        let (record, counts) = read(row());
        let record = record.expect("readable");
        assert!(counts.iter().all(|(_, n)| *n == 0), "{counts:?}");
        let keys = record.keys.expect("keys");
        assert_eq!((keys.version, record.change_seq), (4, 9));
        assert!(keys.document.contains_kid("a"));
        assert_eq!(keys.skipped[0].kid.as_deref(), Some("pq"));
        assert_eq!(record.validators.etag.as_deref(), Some("\"e\""));
        assert_eq!(record.status.last_error, None);
    }

    /// `row()` registered by issuer, its discovery state as `discovery`.
    fn issuer_row(discovery: &str) -> StoredRow {
        let mut stored = row();
        stored.registration.jwks_url = String::new();
        stored.registration.issuer = Some("https://idp.example.com".into());
        refresh(&mut stored).discovery = Some(discovery.into());
        stored
    }

    #[test]
    fn a_discovery_state_reads_back_as_written() {
        let discovered = r#"{"metadata":{"jwks_uri":"https://idp.example.com/keys","document":"oauth-authorization-server","confirmed_at":"2026-12-01T00:00:00Z","fresh_until":"2026-12-01T01:00:00Z"},"etag":"\"m\"","last_modified":null,"cache_policy":null,"status":{"last_attempt_at":"2026-12-01T00:00:00Z","last_error":null,"consecutive_failures":0,"next_attempt_at":"2026-12-01T00:55:00Z"}}"#;
        let (record, counts) = read(issuer_row(discovered));
        let record = record.expect("readable");
        assert!(counts.iter().all(|(_, n)| *n == 0), "{counts:?}");
        assert_eq!(
            record.registration.source.issuer().map(Issuer::as_str),
            Some("https://idp.example.com")
        );
        assert_eq!(
            record.jwks_url().map(JwksUrl::as_str),
            Some("https://idp.example.com/keys")
        );
        let written = RefreshColumns::from_record(&record).expect("writable");
        let again: serde_json::Value =
            serde_json::from_str(&written.discovery.expect("written")).unwrap();
        assert_eq!(
            again,
            serde_json::from_str::<serde_json::Value>(discovered).unwrap()
        );
    }

    #[test]
    fn an_unreadable_discovery_state_is_dropped_and_the_issuer_discovered_again_at_once() {
        let (record, counts) = read(issuer_row(r#"{"metadata": 7}"#));
        let record = record.expect("the registration is readable");
        assert_eq!(count(&counts, RowPart::Discovery), 1);
        assert_eq!(record.jwks_url(), None);
        assert_eq!(record.due_at(), None, "due at once");
        assert!(record.keys.is_some(), "the held keys stay served");
    }

    #[test]
    fn a_revoked_kid_is_withheld_from_what_is_read_back_and_kept_in_what_is_written() {
        let mut stored = row();
        stored.registration.revoked_keys = Some(
            r#"[{"kid":"a","reason":"leaked","revoked_at":"2026-12-01T00:00:00Z","revoked_by":"admin"}]"#
                .into(),
        );
        let (record, _) = read(stored);
        let record = record.expect("readable");
        assert!(record.registration.revoked.contains("a"));
        let keys = record.keys.as_ref().expect("keys");
        assert!(!keys.document.contains_kid("a") && keys.fetched.contains_kid("a"));
        let written = RefreshColumns::from_record(&record).expect("writable");
        let stored = KeySetDocument::parse(&written.jwks_json.expect("a key set")).unwrap();
        assert!(
            stored.document.contains_kid("a"),
            "the set as fetched is what is stored"
        );
    }

    #[test]
    fn an_unreadable_revocation_list_leaves_the_row_out() {
        let mut stored = row();
        stored.registration.revoked_keys = Some(r#"[{"kid":"a"}]"#.into());
        let (record, counts) = read(stored);
        assert!(record.is_none(), "nothing served rather than a revoked key");
        assert_eq!(count(&counts, RowPart::Registration), 1);
    }

    #[test]
    fn an_unreadable_key_set_quarantines_the_provider_and_keeps_its_version() {
        type Damage = fn(&mut RefreshColumns);
        let damages: [(Damage, u64); 4] = [
            (|c| c.jwks_json = Some(b"not json".to_vec()), 4),
            (
                |c| {
                    c.jwks_json =
                        Some(br#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#.to_vec())
                },
                4,
            ),
            (|c| c.fresh_until = None, 4),
            (|c| c.version = -3, 0),
        ];
        for (damage, version) in damages {
            let mut stored = row();
            damage(refresh(&mut stored));
            let (record, counts) = read(stored);
            let record = record.expect("the registration is still served");
            assert_eq!(count(&counts, RowPart::KeySet), 1);
            assert!(record.keys.is_none());
            assert!(
                record.validators.etag.is_none() && record.validators.cached_response.is_none()
            );
            assert_eq!(record.status.next_refresh_at, None, "fetched again at once");
            let error = record.status.last_error.clone().unwrap_or_default();
            assert!(
                error.starts_with("stored key set is unreadable ("),
                "{error}"
            );
            assert_eq!(record.version(), version, "the next set continues from it");
        }
    }

    #[test]
    fn refresh_columns_the_driver_cannot_decode_quarantine_too() {
        let mut stored = row();
        stored.refresh = Err(UndecodedRefresh {
            version: 6,
            reason: "error occurred while decoding column \"fetched_at\"".into(),
        });
        let (record, counts) = read(stored);
        let record = record.expect("the registration is still served");
        assert_eq!(count(&counts, RowPart::KeySet), 1);
        assert_eq!((record.keys.is_none(), record.version()), (true, 6));
    }

    #[test]
    fn an_unreadable_registration_leaves_the_row_out() {
        let damages: [fn(&mut RegistrationColumns); 3] = [
            |r| r.policy = "{".into(),
            |r| r.jwks_url = "not a url".into(),
            |r| r.tenant = "Not A Tenant".into(),
        ];
        for damage in damages {
            let mut stored = row();
            damage(&mut stored.registration);
            let (record, counts) = read(stored);
            assert!(record.is_none());
            assert_eq!(count(&counts, RowPart::Registration), 1);
        }
    }

    #[test]
    fn unreadable_validators_are_dropped_and_the_keys_kept() {
        let mut stored = row();
        refresh(&mut stored).cache_policy = Some("{broken".into());
        let (record, counts) = read(stored);
        let record = record.expect("readable");
        assert_eq!(count(&counts, RowPart::Validators), 1);
        assert_eq!(record.keys.map(|k| k.version), Some(4));
        assert!(record.validators.etag.is_none() && record.validators.cached_response.is_none());
        assert_eq!(record.status.next_refresh_at, None, "fetched again at once");
    }

    #[test]
    fn an_unreadable_skipped_list_shows_empty() {
        let mut stored = row();
        refresh(&mut stored).skipped_keys = Some("[{".into());
        let (record, counts) = read(stored);
        assert_eq!(count(&counts, RowPart::SkippedKeys), 1);
        let keys = record.and_then(|r| r.keys).expect("keys kept");
        assert!(keys.skipped.is_empty());
    }

    #[test]
    fn a_dropped_version_survives_a_write_and_a_read() {
        let mut stored = row();
        refresh(&mut stored).jwks_json = Some(b"garbage".to_vec());
        let (record, _) = read(stored);
        let quarantined = record.expect("readable");
        let written = RefreshColumns::from_record(&quarantined).expect("columns");
        assert_eq!((written.version, written.jwks_json.is_none()), (4, true));
        let mut again = row();
        again.refresh = Ok(written);
        let (record, counts) = read(again);
        assert!(counts.iter().all(|(_, n)| *n == 0), "{counts:?}");
        let record = record.expect("readable");
        assert_eq!((record.keys.is_none(), record.version()), (true, 4));
    }
}
