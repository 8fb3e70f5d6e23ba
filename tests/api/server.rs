//! The server around the services: health, reflection and graceful shutdown.

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{Backend, spawn_app};

#[tokio::test]
async fn health_reports_serving_for_the_server_and_each_service() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut health = HealthClient::new(app.channel().await);
    for service in ["", "keyrelay.v1.KeyService", "keyrelay.v1.AdminService"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }
}

/// Lists the services through one version of server reflection: tools ask for either
/// (grpcurl v1; Postman, grpcui, Evans and Python's grpcio-reflection v1alpha).
macro_rules! reflection_lists_the_keyrelay_services {
    ($test:ident, $version:ident) => {
        #[tokio::test]
        async fn $test() {
            use tonic_reflection::pb::$version::{
                ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse,
            };
            let app = spawn_app(Backend::Sqlite).await;
            let mut reflection = ServerReflectionClient::new(app.channel().await);
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut responses = reflection
                .server_reflection_info(futures::stream::iter([request]))
                .await
                .expect("reflection")
                .into_inner();
            let response = responses
                .message()
                .await
                .expect("reflection answer")
                .expect("one message");
            let Some(MessageResponse::ListServicesResponse(list)) = response.message_response
            else {
                panic!("unexpected reflection answer: {response:?}");
            };
            let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
            for expected in [
                "keyrelay.v1.KeyService",
                "keyrelay.v1.AdminService",
                "grpc.health.v1.Health",
            ] {
                assert!(
                    names.contains(&expected),
                    "{expected} missing from {names:?}"
                );
            }
        }
    };
}

reflection_lists_the_keyrelay_services!(reflection_v1_lists_the_keyrelay_services, v1);
reflection_lists_the_keyrelay_services!(reflection_v1alpha_lists_the_keyrelay_services, v1alpha);

#[tokio::test]
async fn shutdown_stops_accepting_calls() {
    let app = spawn_app(Backend::Sqlite).await;
    let endpoint = app.endpoint();
    app.stop().await;
    let connected = tonic::transport::Channel::from_shared(endpoint)
        .unwrap()
        .connect()
        .await;
    assert!(connected.is_err(), "the listener is closed after shutdown");
}
