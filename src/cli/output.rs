//! Printing for people (text) or for programs (`--json`).

use chrono::DateTime;
use prost_types::Timestamp;
use serde_json::Value;

use crate::proto::v1 as pb;

pub(super) fn print_line(as_json: bool, value: Value, text: impl FnOnce() -> String) {
    if as_json {
        println!("{value}");
    } else {
        println!("{}", text());
    }
}

pub(super) fn time(at: Option<&Timestamp>) -> String {
    at.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .map_or_else(|| "-".to_owned(), |t| t.to_rfc3339())
}

pub(super) fn state_name(status: &pb::ProviderStatus) -> &'static str {
    match status.state() {
        pb::ProviderState::Unspecified => "UNSPECIFIED",
        pb::ProviderState::Pending => "PENDING",
        pb::ProviderState::Ready => "READY",
        pb::ProviderState::Stale => "STALE",
        pb::ProviderState::Failing => "FAILING",
    }
}
