//! Scale of registrations (run with `cargo bench --bench scale`; see `support::scale`):
//! PROVIDERS providers (100,000), warm start and memory, then CPU and refreshes over
//! STEADY_SECS (60) of steady state after SETTLE_SECS (0).

#[allow(dead_code)]
mod support;

use std::time::Duration;

use support::env_or;

#[tokio::main]
async fn main() {
    let count = env_or("PROVIDERS", 100_000);
    let settle = Duration::from_secs(env_or("SETTLE_SECS", 0));
    let steady = Duration::from_secs(env_or("STEADY_SECS", 60));
    support::scale::run(count, settle, steady).await;
}
