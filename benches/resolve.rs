//! Resolve throughput and latency, keyrelay against a bare tonic server (run with
//! `cargo bench --bench resolve`; see `support::resolve`).

#[allow(dead_code)]
mod support;

fn main() {
    support::main_or_baseline(&[support::resolve::BASELINE], || async {
        support::resolve::run().await;
    });
}
