//! The shared conformance vectors (clients/conformance), through `verify_with_key_set`: every
//! verdict must be the expected one. The verdicts are also written, one JSON line per vector,
//! for the comparison across SDKs.

use std::{io::Write, time::Duration};

use keyrelay_verifier::{Expectations, verify_with_key_set};
use serde_json::{Value, json};

fn expectations(expect: &Value) -> Expectations {
    let strings = |field: &str| -> Vec<String> {
        expect[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|value| value.as_str().map(str::to_owned))
            .collect()
    };
    let mut expected = Expectations::new().leeway(Duration::from_secs(
        expect["leeway"].as_u64().expect("a leeway in seconds"),
    ));
    for issuer in strings("issuers") {
        expected = expected.issuer(issuer);
    }
    for audience in strings("audiences") {
        expected = expected.audience(audience);
    }
    expected
}

#[test]
fn every_conformance_vector_gets_its_expected_verdict() {
    let path = std::env::var("KEYRELAY_CONFORMANCE_VECTORS").expect(
        "KEYRELAY_CONFORMANCE_VECTORS is not set: run scripts/test.sh, which materializes the vectors",
    );
    let out = std::env::var("KEYRELAY_CONFORMANCE_RESULTS")
        .expect("KEYRELAY_CONFORMANCE_RESULTS is not set: run scripts/test.sh");
    let vectors: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("vectors file")).expect("JSON");
    let vectors = vectors["vectors"].as_array().expect("vectors");
    assert!(vectors.len() >= 40, "{} vectors", vectors.len());
    let mut results = std::fs::File::create(&out).expect("results file");
    let mut wrong = Vec::new();
    for vector in vectors {
        let name = vector["name"].as_str().expect("name");
        let jwks = serde_json::to_vec(&vector["jwks"]).expect("key set");
        let token = vector["token"].as_str().expect("token");
        let verdict = verify_with_key_set::<Value>(token, &jwks, &expectations(&vector["expect"]));
        let line = match &verdict {
            Ok(claims) => json!({"name": name, "verdict": "accept", "sub": claims["sub"]}),
            Err(err) => json!({"name": name, "verdict": err.kind(), "detail": err.to_string()}),
        };
        writeln!(results, "{line}").expect("write results");
        if line["verdict"] != vector["verdict"] {
            wrong.push(format!(
                "{name}: expected {}, got {line}",
                vector["verdict"]
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
