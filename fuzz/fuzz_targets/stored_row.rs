//! Fuzzes the decoding of stored `providers` rows: arbitrary column values (a disk fault, a
//! manual edit, a guardrail tightened by an upgrade) must decode to a record or be left out,
//! never panic. A record read back is written and read again to the same version, and keys it
//! holds parse again as they were.
#![no_main]

use chrono::{DateTime, Utc};
use keyrelay::{
    domain::key_set::KeySetDocument,
    store::{RefreshColumns, RegistrationColumns, StoredRow, UnreadableRows},
};
use libfuzzer_sys::{arbitrary::Unstructured, fuzz_target};

fn instant(input: &mut Unstructured<'_>) -> Option<DateTime<Utc>> {
    let seconds: i64 = input.arbitrary().ok()?;
    DateTime::from_timestamp(seconds % 400_000_000_000, 0)
}

fn text(input: &mut Unstructured<'_>) -> Option<String> {
    input.arbitrary().ok()
}

fn row(input: &mut Unstructured<'_>) -> Option<StoredRow> {
    let now = Utc::now();
    Some(StoredRow {
        registration: RegistrationColumns {
            tenant: text(input)?,
            provider: text(input)?,
            jwks_url: text(input)?,
            policy: text(input)?,
            revision: input.arbitrary().ok()?,
            created_at: instant(input).unwrap_or(now),
            updated_at: instant(input).unwrap_or(now),
            change_seq: input.arbitrary().ok()?,
        },
        refresh: Ok(RefreshColumns {
            version: input.arbitrary().ok()?,
            jwks_json: input.arbitrary().ok()?,
            etag: input.arbitrary().ok()?,
            last_modified: input.arbitrary().ok()?,
            cache_policy: input.arbitrary().ok()?,
            fetched_at: instant(input),
            fresh_until: instant(input),
            last_attempt_at: instant(input),
            last_error: input.arbitrary().ok()?,
            consecutive_failures: input.arbitrary().ok()?,
            next_refresh_at: instant(input),
            skipped_keys: input.arbitrary().ok()?,
        }),
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(stored) = row(&mut Unstructured::new(data)) else {
        return;
    };
    let registration = stored.registration.clone();
    let unreadable = UnreadableRows::default();
    let Some(record) = stored.into_record(&unreadable) else {
        return;
    };
    if let Some(keys) = &record.keys {
        let again = KeySetDocument::parse(keys.document.json()).expect("held keys parse again");
        assert!(again.document.same_keys_as(&keys.document));
    }
    let written = RefreshColumns::from_record(&record).expect("a read record can be written");
    let reread = StoredRow {
        registration,
        refresh: Ok(written),
    }
    .into_record(&unreadable)
    .expect("the registration read once reads again");
    assert_eq!(reread.version(), record.version());
    assert_eq!(reread.keys.is_some(), record.keys.is_some());
});
