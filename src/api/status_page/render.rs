//! The status page's HTML: the login form, and the page itself (the fleet, then every
//! provider the caller may see). Server-rendered with maud, which escapes every value; one
//! stylesheet inline under the response's CSP nonce, no script, no external asset.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::{
    cluster::{ClusterStatus, shard_ranges},
    domain::TenantId,
    state::{
        Snapshot,
        record::{ProviderRecord, ProviderState},
    },
};

/// Seconds between the page's own reloads.
pub const REFRESH_SECONDS: u32 = 15;

const STYLE: &str = "
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; }
h1 { font-size: 1.4rem; margin: 0 0 .2rem; } h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
.muted { color: #666; } .error { color: #a00; } .revoked { color: #a00; font-weight: 600; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: .3rem .5rem;
  border-bottom: 1px solid #ddd; vertical-align: top; } th { background: #f4f4f6; }
.state { font-weight: 600; } .READY { color: #176b2c; } .STALE { color: #8a5a00; }
.FAILING { color: #a00; } .PENDING { color: #555; }
form { margin: .5rem 0; } input { padding: .25rem .4rem; } code { font-size: 12px; }
";

/// What the page shows.
pub struct View<'a> {
    /// The providers the caller may see, in key order.
    pub providers: &'a [Snapshot],
    /// The fleet, when the caller may see it.
    pub fleet: Option<&'a ClusterStatus>,
    /// The tenant filter in force.
    pub tenant: Option<&'a TenantId>,
    /// When the page is rendered.
    pub now: DateTime<Utc>,
    /// Who is logged in (`admin`, `token:<id>`).
    pub actor: String,
}

fn page(title: &str, nonce: &str, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh {
                    meta http-equiv="refresh" content=(REFRESH_SECONDS);
                }
                title { (title) }
                style nonce=(nonce) { (PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    }
}

/// The login form, with why the last attempt failed, if it did.
pub fn login(nonce: &str, problem: Option<&str>) -> Markup {
    page(
        "keyrelay: log in",
        nonce,
        false,
        html! {
            h1 { "keyrelay" }
            p.muted { "Log in with the server's admin token or an admin access token." }
            @if let Some(problem) = problem {
                p.error role="alert" { (problem) }
            }
            form.login method="post" action="/login" {
                label { "Admin token " input type="password" name="token" autocomplete="off" required; }
                " "
                button type="submit" { "Log in" }
            }
        },
    )
}

/// The status page.
pub fn status(nonce: &str, view: &View<'_>) -> Markup {
    page(
        "keyrelay: status",
        nonce,
        true,
        html! {
            h1 { "keyrelay" }
            p.muted {
                "As " (view.actor) " at " (view.now.format("%Y-%m-%d %H:%M:%S UTC"))
                "; this page reloads every " (REFRESH_SECONDS) " s. "
            }
            form.logout method="post" action="/logout" { button type="submit" { "Log out" } }
            (fleet(view))
            h2 { "Providers" }
            form.filter method="get" action="/" {
                label { "Tenant " input type="text" name="tenant" value=[view.tenant.map(TenantId::as_str)]; }
                " "
                button type="submit" { "Filter" }
                @if view.tenant.is_some() { " " a href="/" { "all tenants" } }
            }
            (providers(view))
        },
    )
}

fn fleet(view: &View<'_>) -> Markup {
    let Some(fleet) = view.fleet else {
        return html! {
            h2 { "Fleet" }
            p.muted { "The fleet is shown to tokens valid for every tenant." }
        };
    };
    let summary = match fleet.single_node {
        true => "single node, refreshing every provider without leases".to_owned(),
        false => {
            let free = fleet.free_shards(view.now);
            format!(
                "{} shards, free: {}",
                fleet.shard_count,
                shard_ranges(&free)
            )
        }
    };
    html! {
        h2 { "Fleet" }
        p { (fleet.store) " store, answered by " (fleet.replica_id) ": " (summary) }
        table.replicas {
            thead {
                tr {
                    th { "Replica" } th { "Address" } th { "Shards" } th { "Started" }
                    th { "Heartbeat" }
                }
            }
            tbody {
                @for replica in &fleet.replicas {
                    tr {
                        td { (replica.id) }
                        td { (replica.address) }
                        td { (replica_shards(fleet, &replica.id, view.now)) }
                        td { (relative(replica.started_at, view.now)) }
                        td { (relative(replica.heartbeat_at, view.now)) }
                    }
                }
            }
        }
    }
}

/// The shards a replica refreshes: their number and ranges.
fn replica_shards(fleet: &ClusterStatus, replica: &str, now: DateTime<Utc>) -> String {
    if fleet.single_node {
        return "all".to_owned();
    }
    let shards = fleet.shards_of(replica, now);
    format!("{} ({})", shards.len(), shard_ranges(&shards))
}

fn providers(view: &View<'_>) -> Markup {
    html! {
        @if view.providers.is_empty() {
            p.muted { "No provider to show." }
        } @else {
            table.providers {
                thead {
                    tr {
                        th { "Provider" } th { "State" } th { "Version" } th { "Keys" }
                        th { "Fetched" } th { "Fresh until" } th { "Usable until" }
                        th { "Next refresh" } th { "Failures" } th { "Last error" }
                    }
                }
                tbody {
                    @for snapshot in view.providers { (provider(snapshot, view.now)) }
                }
            }
        }
    }
}

fn provider(snapshot: &Snapshot, now: DateTime<Utc>) -> Markup {
    let record = &snapshot.record;
    let state = state_name(record.state(snapshot.at));
    let keys = record.keys.as_ref();
    let kids: Vec<&str> = keys.map_or_else(Vec::new, |keys| {
        let keys = keys.document.keys();
        keys.iter()
            .map(|k| k.kid.as_deref().unwrap_or("(no kid)"))
            .collect()
    });
    let when =
        |at: Option<DateTime<Utc>>| at.map_or_else(|| "never".to_owned(), |at| relative(at, now));
    html! {
        tr data-state=(state) data-tenant=(record.registration.key.tenant().as_str()) {
            td {
                (record.registration.key) br; code.muted { (record.registration.source.redacted()) }
                @if let Some(discovery) = record.discovery.as_deref() {
                    br; span.muted {
                        @match &discovery.metadata {
                            Some(metadata) => {
                                "keys at " code { (metadata.jwks_uri.redacted()) }
                                ", confirmed " (relative(metadata.confirmed_at, now))
                            }
                            None => { "not discovered yet" }
                        }
                    }
                }
            }
            td.state.(state) { (state) }
            td { (record.version()) }
            td {
                (kids.len()) @if !kids.is_empty() { ": " code { (kids.join(", ")) } }
                @for skipped in record.skipped_keys() {
                    br; span.muted {
                        "skipped " code { (skipped.kid.as_deref().unwrap_or("(no kid)")) } ": " (skipped.reason)
                    }
                }
                @for revoked in record.registration.revoked.keys() {
                    br; span.revoked {
                        "revoked " code { (revoked.kid) } " " (relative(revoked.revoked_at, now))
                        " by " (revoked.revoked_by) ": " (revoked.reason)
                    }
                }
            }
            td { (when(keys.map(|k| k.fetched_at))) }
            td { (when(keys.map(|k| k.fresh_until))) }
            td { (when(keys.map(|k| k.usable_until(&snapshot.policy)))) }
            td { (when(record.status.next_refresh_at)) }
            td { (record.status.consecutive_failures) }
            td.error {
                (record.status.last_error.as_deref().unwrap_or(""))
                @if let Some(error) = discovery_error(record) {
                    @if record.status.last_error.is_some() { br; }
                    "discovery: " (error)
                }
            }
        }
    }
}

/// Why discovery failed, once it had succeeded (before that, the provider's own error says
/// it).
fn discovery_error(record: &ProviderRecord) -> Option<&str> {
    let discovery = record.discovery.as_deref()?;
    discovery.metadata.as_ref()?;
    discovery.status.last_error.as_deref()
}

fn state_name(state: ProviderState) -> &'static str {
    match state {
        ProviderState::Pending => "PENDING",
        ProviderState::Ready => "READY",
        ProviderState::Stale => "STALE",
        ProviderState::Failing => "FAILING",
    }
}

/// `at` relative to `now`, to the second: `in 4m 10s`, `12s ago`, `now`.
pub fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (at - now).num_seconds();
    let span = humantime::format_duration(std::time::Duration::from_secs(seconds.unsigned_abs()));
    match seconds {
        0 => "now".to_owned(),
        s if s > 0 => format!("in {span}"),
        _ => format!("{span} ago"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_relative_to_the_second() {
        let now = Utc::now();
        let later = now + chrono::Duration::seconds(250);
        assert_eq!(relative(later, now), "in 4m 10s");
        assert_eq!(
            relative(now - chrono::Duration::seconds(12), now),
            "12s ago"
        );
        assert_eq!(relative(now, now), "now");
    }

    #[test]
    fn values_are_escaped() {
        let markup = login("n", Some("<script>alert(1)</script>")).into_string();
        assert!(!markup.contains("<script>"), "{markup}");
        assert!(markup.contains("&lt;script&gt;"));
    }
}
