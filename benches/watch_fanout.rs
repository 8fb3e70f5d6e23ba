//! WatchKeys fan-out, keyrelay against a bare tonic stream server (run with
//! `cargo bench --bench watch_fanout`; see `support::fanout`).

#[allow(dead_code)]
mod support;

fn main() {
    support::main_or_baseline(&[support::fanout::BASELINE], || async {
        support::fanout::run().await;
    });
}
