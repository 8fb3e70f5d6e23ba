//! The deployment files against a live server: every metric the alert rules and the Grafana
//! dashboard use is one keyrelay exports, under that name.

use std::collections::BTreeSet;

use crate::{
    helpers::{Backend, selector, spawn_app},
    mock_idp::{MockIdp, Mode},
};

/// Every `keyrelay_*` metric name in a file.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("keyrelay_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_use_is_exported() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut used = BTreeSet::new();
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/keyrelay.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).expect("deployment file");
        let names = metric_names(&text);
        assert!(names.len() > 5, "{file} names only {names:?}");
        used.extend(names);
    }

    let app = spawn_app(Backend::Sqlite).await;
    let healthy = MockIdp::start(app.clock.clone()).await;
    let failing = MockIdp::start(app.clock.clone()).await;
    failing.set_mode(Mode::Status(503, None));
    app.register("acme", "healthy", &healthy.jwks_url()).await;
    app.register("acme", "failing", &failing.jwks_url()).await;
    app.resolve("acme", "healthy", None).await.expect("served");
    let _watch = app.watch(vec![selector("acme", "")], vec![]).await;

    let (status, exported) = app.http_get("/metrics").await;
    assert_eq!(status, 200);
    let samples: BTreeSet<&str> = exported
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| !samples.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "used by the deployment files but not exported: {missing:?}\n{exported}"
    );
}
