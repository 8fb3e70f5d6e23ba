//! The key-set parse, the largest part of a warm start (run with
//! `cargo bench --bench key_set_parse`): DOCUMENTS (100,000) stored documents of the scale
//! bench parsed with `KeySetDocument::parse`, against `serde_json` reading the same bodies
//! into a JSON tree, the least any parse of them does. Alternates the two ROUNDS (5) times
//! and prints each round's time per document and the ratio.

#[allow(dead_code)]
mod support;

use std::{hint::black_box, time::Instant};

use keyrelay::domain::key_set::KeySetDocument;
use support::{env_or, scale::jwks};

fn main() {
    let documents: Vec<Vec<u8>> = (0..env_or("DOCUMENTS", 100_000u64))
        .map(|i| jwks(i).into_bytes())
        .collect();
    let mut ratios = Vec::new();
    for round in 1..=env_or("ROUNDS", 5) {
        let tree = per_document(&documents, |body| {
            black_box(serde_json::from_slice::<serde_json::Value>(body).is_ok());
        });
        let parse = per_document(&documents, |body| {
            black_box(KeySetDocument::parse(body).is_ok());
        });
        ratios.push(parse / tree);
        println!(
            "round {round}: KeySetDocument::parse {parse:.2} µs, JSON tree {tree:.2} µs a document: {:.2}x",
            parse / tree
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!("median ratio {:.2}x", ratios[ratios.len() / 2]);
}

/// Microseconds a document that `parse` takes over all of `documents`.
fn per_document(documents: &[Vec<u8>], parse: impl Fn(&[u8])) -> f64 {
    let started = Instant::now();
    for body in documents {
        parse(body);
    }
    started.elapsed().as_secs_f64() * 1e6 / documents.len() as f64
}
