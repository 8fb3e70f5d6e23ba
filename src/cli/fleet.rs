//! `keyrelay health` and `keyrelay cluster`.

use serde_json::{Value, json};
use tonic::Status;

use super::{
    ClientOptions,
    connect::{ClientError, admin_client, connect},
    output::{print_line, time},
};
use crate::proto::v1 as pb;

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
    let lease = match &status.lease {
        Some(lease) if lease.active => format!(
            "leader {} (term {}, lease until {})",
            lease.holder,
            lease.term,
            time(lease.expires_at.as_ref())
        ),
        Some(lease) => format!(
            "no active leader (last: {} term {})",
            lease.holder, lease.term
        ),
        None if status.single_node => "single node, leading without a lease".to_owned(),
        None => "no leader yet".to_owned(),
    };
    let mut text = format!(
        "{} store, answered by {}: {lease}",
        status.store, status.replica_id
    );
    for replica in &status.replicas {
        text.push_str(&format!(
            "\n  {}{}\t{}\theartbeat {}",
            replica.id,
            if replica.leader { " (leader)" } else { "" },
            replica.address,
            time(replica.heartbeat_at.as_ref())
        ));
    }
    text
}

pub(super) fn cluster_json(status: &pb::GetClusterStatusResponse) -> Value {
    json!({
        "replica_id": status.replica_id,
        "store": status.store,
        "single_node": status.single_node,
        "lease": status.lease.as_ref().map(|lease| json!({
            "holder": lease.holder,
            "term": lease.term,
            "expires_at": time(lease.expires_at.as_ref()),
            "active": lease.active,
        })),
        "replicas": status.replicas.iter().map(|replica| json!({
            "id": replica.id,
            "address": replica.address,
            "leader": replica.leader,
            "started_at": time(replica.started_at.as_ref()),
            "heartbeat_at": time(replica.heartbeat_at.as_ref()),
        })).collect::<Vec<_>>(),
    })
}
