//! `keyrelay health` and `keyrelay cluster`.

use serde_json::{Value, json};
use tonic::Status;

use super::{
    ClientOptions,
    connect::{ClientError, admin_client, connect},
    output::{print_line, time},
};
use crate::{cluster::shard_ranges, proto::v1 as pb};

/// Runs `keyrelay health`.
pub(super) async fn health(options: &ClientOptions) -> Result<(), ClientError> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut health = HealthClient::new(connect(options).await?);
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner()
        .status();
    if status == ServingStatus::Serving {
        println!("SERVING");
        Ok(())
    } else {
        Err(ClientError::Call(Status::unavailable(format!(
            "health is {}",
            status.as_str_name()
        ))))
    }
}

/// Runs `keyrelay cluster`.
pub(super) async fn cluster(options: &ClientOptions) -> Result<(), ClientError> {
    let mut admin = admin_client(options).await?;
    let status = admin
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await?
        .into_inner();
    print_line(options.json, cluster_json(&status), || {
        cluster_text(&status)
    });
    Ok(())
}

pub(super) fn cluster_text(status: &pb::GetClusterStatusResponse) -> String {
    let summary = match status.single_node {
        true => "single node, refreshing every provider without leases".to_owned(),
        false => {
            let free: Vec<u32> = status
                .shards
                .iter()
                .filter(|lease| !lease.active)
                .map(|lease| lease.shard)
                .collect();
            format!(
                "{} shards, free: {}",
                status.shard_count,
                shard_ranges(&free)
            )
        }
    };
    let mut text = format!(
        "{} store, answered by {}: {summary}",
        status.store, status.replica_id
    );
    for replica in &status.replicas {
        let shards = match status.single_node {
            true => "all shards".to_owned(),
            false => {
                let held = held_by(status, &replica.id);
                format!("{} shards ({})", held.len(), shard_ranges(&held))
            }
        };
        text.push_str(&format!(
            "\n  {}\t{}\t{shards}\theartbeat {}",
            replica.id,
            replica.address,
            time(replica.heartbeat_at.as_ref())
        ));
    }
    for lease in &status.shards {
        text.push_str(&shard_line(lease));
    }
    text
}

/// One shard's lease: its holder, term and expiry, or who held it last.
fn shard_line(lease: &pb::Lease) -> String {
    match lease.active {
        true => format!(
            "\n  shard {}\t{}\tterm {}\tuntil {}",
            lease.shard,
            lease.holder,
            lease.term,
            time(lease.expires_at.as_ref())
        ),
        false if lease.term == 0 => format!("\n  shard {}\tfree, never held", lease.shard),
        false => format!(
            "\n  shard {}\tfree (last {} term {})",
            lease.shard, lease.holder, lease.term
        ),
    }
}

/// The shards whose active lease `replica` holds.
fn held_by(status: &pb::GetClusterStatusResponse, replica: &str) -> Vec<u32> {
    let active = status.shards.iter().filter(|lease| lease.active);
    active
        .filter(|lease| lease.holder == replica)
        .map(|lease| lease.shard)
        .collect()
}

pub(super) fn cluster_json(status: &pb::GetClusterStatusResponse) -> Value {
    json!({
        "replica_id": status.replica_id,
        "store": status.store,
        "single_node": status.single_node,
        "shard_count": status.shard_count,
        "shards": status.shards.iter().map(|lease| json!({
            "shard": lease.shard,
            "holder": lease.holder,
            "term": lease.term,
            "expires_at": time(lease.expires_at.as_ref()),
            "active": lease.active,
        })).collect::<Vec<_>>(),
        "replicas": status.replicas.iter().map(|replica| json!({
            "id": replica.id,
            "address": replica.address,
            "shards_owned": replica.shards_owned,
            "started_at": time(replica.started_at.as_ref()),
            "heartbeat_at": time(replica.heartbeat_at.as_ref()),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(shard: u32, holder: &str, term: u64, active: bool) -> pb::Lease {
        pb::Lease {
            shard,
            holder: holder.into(),
            term,
            expires_at: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 0,
            }),
            active,
        }
    }

    #[test]
    fn the_cluster_text_shows_each_replicas_shards_and_each_shards_holder_and_term() {
        let replica = |id: &str| pb::Replica {
            id: id.into(),
            address: format!("{id}:50051"),
            ..Default::default()
        };
        #[allow(deprecated)]
        let status = pb::GetClusterStatusResponse {
            replica_id: "a".into(),
            store: "postgres".into(),
            shard_count: 4,
            shards: vec![
                lease(0, "a", 3, true),
                lease(1, "a", 4, true),
                lease(2, "b", 7, true),
                lease(3, "b", 7, false),
            ],
            replicas: vec![replica("a"), replica("b")],
            ..Default::default()
        };
        let text = cluster_text(&status);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "postgres store, answered by a: 4 shards, free: 3");
        assert!(
            lines[1].starts_with("  a\ta:50051\t2 shards (0-1)\t"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("  b\tb:50051\t1 shards (2)\t"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("  shard 0\ta\tterm 3\tuntil "),
            "{text}"
        );
        assert!(
            lines[5].starts_with("  shard 2\tb\tterm 7\tuntil "),
            "{text}"
        );
        assert_eq!(lines[6], "  shard 3\tfree (last b term 7)");
    }
}
