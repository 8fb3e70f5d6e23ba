//! AdminService: validation, authentication, listing, unregistering.

use keyrelay::proto::v1 as pb;
use tonic::Code;

use crate::{
    helpers::{Backend, spawn_app, spawn_app_with},
    mock_idp::MockIdp,
};

fn register_request(tenant: &str, provider: &str, url: &str) -> pb::RegisterProviderRequest {
    pb::RegisterProviderRequest {
        tenant: tenant.into(),
        provider: provider.into(),
        jwks_url: url.into(),
        policy: None,
        ..Default::default()
    }
}

#[tokio::test]
async fn invalid_identifiers_urls_and_policies_are_invalid_arguments_naming_the_field() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut admin = app.admin().await;
    let ok_url = "https://idp.example.com/jwks";
    let cases = [
        (register_request("Acme", "okta", ok_url), "invalid tenant"),
        (register_request("", "okta", ok_url), "invalid tenant"),
        (
            register_request("acme", "ok ta", ok_url),
            "invalid provider",
        ),
        (
            register_request("acme", &"p".repeat(65), ok_url),
            "invalid provider",
        ),
        (
            register_request("acme", "okta", "not a url"),
            "invalid jwks_url",
        ),
        (
            register_request("acme", "okta", "ftp://idp.example.com/jwks"),
            "invalid jwks_url",
        ),
        (
            register_request("acme", "okta", "https://10.0.0.1/jwks"),
            "invalid jwks_url",
        ),
        (
            pb::RegisterProviderRequest {
                policy: Some(crate::helpers::policy(Some(600), Some(60), None)),
                ..register_request("acme", "okta", ok_url)
            },
            "invalid policy.max_ttl",
        ),
    ];
    for (request, expected) in cases {
        let err = admin.register_provider(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{expected}");
        assert!(
            err.message().starts_with(expected),
            "{expected}: {}",
            err.message()
        );
    }
    let err = app.resolve("acme", "a/b", None).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message().starts_with("invalid provider")),
        (Code::InvalidArgument, true)
    );
    let err = app.resolve("acme", "okta", Some("")).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message().starts_with("invalid kid")),
        (Code::InvalidArgument, true)
    );
}

#[tokio::test]
async fn plain_http_and_loopback_need_the_development_flag() {
    let app = spawn_app_with(Backend::Sqlite, &["--dev-allow-http-loopback=false"]).await;
    let mut admin = app.admin().await;
    for url in [
        "http://idp.example.com/jwks",
        "https://127.0.0.1/jwks",
        "https://localhost/jwks",
    ] {
        let err = admin
            .register_provider(register_request("acme", "okta", url))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{url}");
        assert!(
            err.message().contains("--dev-allow-http-loopback"),
            "{url}: {}",
            err.message()
        );
    }
}

#[tokio::test]
async fn admin_calls_without_the_right_token_are_unauthenticated() {
    let app = spawn_app(Backend::Sqlite).await;
    for token in [None, Some("wrong")] {
        let mut admin = app.admin_with_token(token).await;
        let err = admin
            .register_provider(register_request(
                "acme",
                "okta",
                "https://idp.example.com/jwks",
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}");
        let err = admin
            .list_providers(pb::ListProvidersRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}");
    }
    let err = app.resolve("acme", "okta", None).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "Resolve needs no token");
}

#[tokio::test]
async fn unknown_providers_are_not_found_everywhere() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut admin = app.admin().await;
    let get = pb::GetProviderRequest {
        tenant: "acme".into(),
        provider: "nope".into(),
    };
    assert_eq!(
        admin.get_provider(get).await.unwrap_err().code(),
        Code::NotFound
    );
    let refresh = pb::RefreshProviderRequest {
        tenant: "acme".into(),
        provider: "nope".into(),
    };
    assert_eq!(
        admin.refresh_provider(refresh).await.unwrap_err().code(),
        Code::NotFound
    );
    let rm = pb::UnregisterProviderRequest {
        tenant: "acme".into(),
        provider: "nope".into(),
    };
    assert_eq!(
        admin.unregister_provider(rm).await.unwrap_err().code(),
        Code::NotFound
    );
    let err = app.resolve("acme", "nope", None).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "provider acme/nope is not registered");
}

#[tokio::test]
async fn re_registering_updates_and_unregistering_removes_keys() {
    let app = spawn_app(Backend::Sqlite).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    let mut admin = app.admin().await;
    let first = admin
        .register_provider(register_request("acme", "okta", &idp.jwks_url()))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    let again = admin
        .register_provider(register_request("acme", "okta", &idp.url("/jwks?v=2")))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    let provider = again.provider.unwrap();
    assert_eq!(provider.jwks_url, idp.url("/jwks?v=2"));
    assert_eq!(
        provider.status.unwrap().version,
        1,
        "same keys from the new URL: same version"
    );

    let rm = pb::UnregisterProviderRequest {
        tenant: "acme".into(),
        provider: "okta".into(),
    };
    admin.unregister_provider(rm).await.unwrap();
    assert_eq!(
        app.resolve("acme", "okta", None).await.unwrap_err().code(),
        Code::NotFound
    );
    let list = admin
        .list_providers(pb::ListProvidersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.providers.is_empty());
}

#[tokio::test]
async fn list_pages_through_providers_in_order_and_filters_by_tenant() {
    let app = spawn_app(Backend::Sqlite).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    for (tenant, provider) in [
        ("beta", "b"),
        ("acme", "c"),
        ("acme", "a"),
        ("acme", "b"),
        ("zulu", "a"),
    ] {
        app.register(tenant, provider, &idp.jwks_url()).await;
    }
    let mut admin = app.admin().await;
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListProvidersRequest {
            tenant: String::new(),
            page_size: 2,
            page_token,
        };
        let page = admin.list_providers(request).await.unwrap().into_inner();
        assert!(page.providers.len() <= 2);
        seen.extend(
            page.providers
                .iter()
                .map(|p| format!("{}/{}", p.tenant, p.provider)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, ["acme/a", "acme/b", "acme/c", "beta/b", "zulu/a"]);

    let request = pb::ListProvidersRequest {
        tenant: "acme".into(),
        page_size: 0,
        page_token: String::new(),
    };
    let page = admin.list_providers(request).await.unwrap().into_inner();
    let names: Vec<_> = page.providers.iter().map(|p| p.provider.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert!(page.next_page_token.is_empty());

    let bad = pb::ListProvidersRequest {
        page_token: "garbage!".into(),
        ..Default::default()
    };
    let err = admin.list_providers(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("invalid page_token"));
}
