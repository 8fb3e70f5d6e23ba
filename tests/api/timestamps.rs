//! Every `google.protobuf.Timestamp` in every RPC's response lies in the range the type
//! documents (0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z): clients such as Python's
//! `json_format` refuse anything outside it. Responses are walked generically, through the
//! served descriptors, so a field added later is checked too.

use keyrelay::proto::{FILE_DESCRIPTOR_SET, v1 as pb};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage, Value};

use crate::{
    helpers::{Backend, TestApp, selector, spawn_app},
    mock_idp::MockIdp,
};

const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

/// Decodes `response` as the protobuf message `name` and returns every Timestamp in it, as
/// (field path, seconds, nanos).
fn timestamps(
    pool: &DescriptorPool,
    name: &str,
    response: &impl Message,
) -> Vec<(String, i64, i32)> {
    let descriptor = pool
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} is served"));
    let message = DynamicMessage::decode(descriptor, response.encode_to_vec().as_slice())
        .expect("the response decodes as its served type");
    let mut found = Vec::new();
    walk(&message, name, &mut found);
    found
}

fn walk(message: &DynamicMessage, path: &str, found: &mut Vec<(String, i64, i32)>) {
    if message.descriptor().full_name() == "google.protobuf.Timestamp" {
        let field = |name: &str| message.get_field_by_name(name).map(|v| v.into_owned());
        let seconds = field("seconds")
            .and_then(|v| v.as_i64())
            .unwrap_or_default();
        let nanos = field("nanos").and_then(|v| v.as_i32()).unwrap_or_default();
        found.push((path.to_owned(), seconds, nanos));
        return;
    }
    for (field, value) in message.fields() {
        let path = format!("{path}.{}", field.name());
        visit(value, &path, found);
    }
}

fn visit(value: &Value, path: &str, found: &mut Vec<(String, i64, i32)>) {
    match value {
        Value::Message(inner) => walk(inner, path, found),
        Value::List(items) => items.iter().for_each(|item| visit(item, path, found)),
        Value::Map(entries) => entries.values().for_each(|item| visit(item, path, found)),
        _ => {}
    }
}

/// Checks every Timestamp of `response` and returns how many there were.
fn check(pool: &DescriptorPool, name: &str, response: &impl Message) -> usize {
    let found = timestamps(pool, name, response);
    for (path, seconds, nanos) in &found {
        assert!(
            (MIN_SECONDS..=MAX_SECONDS).contains(seconds) && (0..1_000_000_000).contains(nanos),
            "{path} = {seconds}s {nanos}ns is outside google.protobuf.Timestamp's range"
        );
    }
    found.len()
}

async fn every_timestamp_in_every_response_is_in_range(backend: Backend) {
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("descriptor set");
    assert!(
        pool.get_message_by_name("google.protobuf.Timestamp")
            .is_some()
    );
    let app = spawn_app(backend).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    let mut admin = app.admin().await;
    let mut seen = Vec::new();
    let mut record = |name: &str, count: usize| seen.push((name.to_owned(), count));

    let registered = admin
        .register_provider(pb::RegisterProviderRequest {
            tenant: "acme".into(),
            provider: "okta".into(),
            jwks_url: idp.jwks_url(),
            policy: None,
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner();
    record(
        "RegisterProvider",
        check(&pool, "keyrelay.v1.RegisterProviderResponse", &registered),
    );
    let got = admin
        .get_provider(pb::GetProviderRequest {
            tenant: "acme".into(),
            provider: "okta".into(),
        })
        .await
        .expect("get")
        .into_inner();
    record(
        "GetProvider",
        check(&pool, "keyrelay.v1.GetProviderResponse", &got),
    );
    let listed = admin
        .list_providers(pb::ListProvidersRequest::default())
        .await
        .expect("list")
        .into_inner();
    record(
        "ListProviders",
        check(&pool, "keyrelay.v1.ListProvidersResponse", &listed),
    );
    let refreshed = admin
        .refresh_provider(pb::RefreshProviderRequest {
            tenant: "acme".into(),
            provider: "okta".into(),
        })
        .await
        .expect("refresh")
        .into_inner();
    record(
        "RefreshProvider",
        check(&pool, "keyrelay.v1.RefreshProviderResponse", &refreshed),
    );
    let cluster = admin
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await
        .expect("cluster")
        .into_inner();
    record(
        "GetClusterStatus",
        check(&pool, "keyrelay.v1.GetClusterStatusResponse", &cluster),
    );
    if backend == Backend::Sqlite {
        assert!(cluster.single_node && cluster.shards.is_empty() && cluster.shard_count == 0);
        #[allow(deprecated)]
        let leading = cluster.replicas.iter().all(|replica| replica.leader);
        assert!(
            leading,
            "a single node is reported as refreshing, as before shards"
        );
    }
    let created = admin
        .create_token(pb::CreateTokenRequest {
            role: pb::TokenRole::Verifier.into(),
            tenant: "acme".into(),
            description: "timestamps".into(),
            ttl: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        })
        .await
        .expect("create token")
        .into_inner();
    record(
        "CreateToken",
        check(&pool, "keyrelay.v1.CreateTokenResponse", &created),
    );
    let id = created.token.expect("token").id;
    let tokens = admin
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .expect("list tokens")
        .into_inner();
    record(
        "ListTokens",
        check(&pool, "keyrelay.v1.ListTokensResponse", &tokens),
    );
    let revoked = admin
        .revoke_token(pb::RevokeTokenRequest { id })
        .await
        .expect("revoke")
        .into_inner();
    record(
        "RevokeToken",
        check(&pool, "keyrelay.v1.RevokeTokenResponse", &revoked),
    );
    let set = admin
        .set_tenant_access(pb::SetTenantAccessRequest {
            tenant: "acme".into(),
            verifier_token_required: false,
        })
        .await
        .expect("set access")
        .into_inner();
    record(
        "SetTenantAccess",
        check(&pool, "keyrelay.v1.SetTenantAccessResponse", &set),
    );
    let access = admin
        .get_tenant_access(pb::GetTenantAccessRequest {
            tenant: "acme".into(),
        })
        .await
        .expect("get access")
        .into_inner();
    record(
        "GetTenantAccess",
        check(&pool, "keyrelay.v1.GetTenantAccessResponse", &access),
    );
    let audit = admin
        .list_audit_events(pb::ListAuditEventsRequest::default())
        .await
        .expect("audit")
        .into_inner();
    record(
        "ListAuditEvents",
        check(&pool, "keyrelay.v1.ListAuditEventsResponse", &audit),
    );
    let revoked = admin
        .revoke_key(pb::RevokeKeyRequest {
            tenant: "acme".into(),
            provider: "okta".into(),
            kid: "key-1".into(),
            reason: "leaked".into(),
        })
        .await
        .expect("revoke")
        .into_inner();
    record(
        "RevokeKey",
        check(&pool, "keyrelay.v1.RevokeKeyResponse", &revoked),
    );
    let reinstated = admin
        .reinstate_key(pb::ReinstateKeyRequest {
            tenant: "acme".into(),
            provider: "okta".into(),
            kid: "key-1".into(),
        })
        .await
        .expect("reinstate")
        .into_inner();
    record(
        "ReinstateKey",
        check(&pool, "keyrelay.v1.ReinstateKeyResponse", &reinstated),
    );
    admin
        .register_provider(pb::RegisterProviderRequest {
            tenant: "acme".into(),
            provider: "internal".into(),
            pushed: true,
            ..Default::default()
        })
        .await
        .expect("register pushed");
    let pushed = admin
        .publish_key_set(pb::PublishKeySetRequest {
            tenant: "acme".into(),
            provider: "internal".into(),
            jwks_json: crate::mock_idp::jwks(&["k1"])
                .to_string()
                .into_bytes()
                .into(),
        })
        .await
        .expect("publish")
        .into_inner();
    record(
        "PublishKeySet",
        check(&pool, "keyrelay.v1.PublishKeySetResponse", &pushed),
    );
    key_service(&app, &pool, &mut record).await;
    let removed = admin
        .unregister_provider(pb::UnregisterProviderRequest {
            tenant: "acme".into(),
            provider: "okta".into(),
        })
        .await
        .expect("unregister")
        .into_inner();
    record(
        "UnregisterProvider",
        check(&pool, "keyrelay.v1.UnregisterProviderResponse", &removed),
    );

    let services = ["keyrelay.v1.AdminService", "keyrelay.v1.KeyService"];
    let methods: usize = services
        .iter()
        .map(|name| {
            pool.get_service_by_name(name)
                .expect("served")
                .methods()
                .len()
        })
        .sum();
    assert_eq!(seen.len(), methods, "every RPC was called: {seen:?}");
    for (rpc, count) in &seen {
        let has_timestamps = !matches!(rpc.as_str(), "UnregisterProvider");
        assert_eq!(
            *count > 0,
            has_timestamps,
            "{rpc}: {count} timestamps checked"
        );
    }
}

async fn key_service(app: &TestApp, pool: &DescriptorPool, record: &mut impl FnMut(&str, usize)) {
    let mut keys = app.keys().await;
    let resolved = keys
        .resolve(pb::ResolveRequest {
            tenant: "acme".into(),
            provider: "okta".into(),
            kid: None,
            if_newer_than_version: None,
        })
        .await
        .expect("resolve")
        .into_inner();
    record(
        "Resolve",
        check(pool, "keyrelay.v1.ResolveResponse", &resolved),
    );
    let mut watch = app.watch(vec![selector("acme", "")], vec![]).await;
    let set = watch.next_key_set().await;
    let event = pb::WatchKeysResponse {
        event: Some(pb::watch_keys_response::Event::KeySet(set)),
    };
    record(
        "WatchKeys",
        check(pool, "keyrelay.v1.WatchKeysResponse", &event),
    );
}

#[tokio::test]
async fn every_timestamp_in_every_response_is_in_range_on_sqlite() {
    every_timestamp_in_every_response_is_in_range(Backend::Sqlite).await;
}

#[tokio::test]
async fn every_timestamp_in_every_response_is_in_range_on_postgres() {
    every_timestamp_in_every_response_is_in_range(Backend::Postgres).await;
}
