//! Every comparison of keyrelay against its own stack's limit in one run (run with
//! `cargo bench --bench limits`): Resolve against a bare tonic server in alternating pairs,
//! the WatchKeys fan-out against a bare tonic stream server, 100,000 providers (warm start,
//! memory, steady state) and 1,000,000 providers (MILLION_PROVIDERS, 0 to leave it out; it
//! settles for SETTLE_SECS, 60, before its steady state). One after another, never at once:
//! they share the machine's cores. Prints each part's raw figures as it goes, then a table of
//! every measure with its goal. The environment of each part applies (see `support::resolve`,
//! `support::fanout`, `support::scale`); on the 2-core machine of BENCHMARKS.md the whole run
//! takes about ten minutes.

#[allow(dead_code)]
mod support;

use std::time::Duration;

use support::{env_or, fanout, resolve, scale};

fn main() {
    support::main_or_baseline(&[resolve::BASELINE, fanout::BASELINE], run);
}

async fn run() {
    let resolve = resolve::run().await;
    let fanout = fanout::run().await;
    let steady = Duration::from_secs(env_or("STEADY_SECS", 60));
    let hundred_thousand = scale::run(100_000, Duration::ZERO, steady).await;
    let million = match env_or("MILLION_PROVIDERS", 1_000_000) {
        0 => None,
        count => {
            let settle = Duration::from_secs(env_or("SETTLE_SECS", 60));
            Some(scale::run(count, settle, steady).await)
        }
    };
    println!();
    println!("{:<58} {:<44} {:<14} verdict", "measure", "figures", "goal");
    print_resolve(&resolve);
    print_fanout(&fanout);
    print_scale(&hundred_thousand, 1.0, 250);
    if let Some(million) = million {
        print_scale(&million, 10.0, 2560);
        row(
            "1,000,000 providers: steady-state CPU, 1 h lifetimes",
            format!(
                "{:.1} % of one core ({:.0} refreshes/s)",
                million.cpu_percent, million.refreshes_per_second
            ),
            "< 25 %",
            million.cpu_percent < 25.0,
        );
    }
}

fn row(measure: &str, figures: String, goal: &str, met: bool) {
    let verdict = if met { "met" } else { "missed" };
    println!("{measure:<58} {figures:<44} {goal:<14} {verdict}");
}

fn print_resolve(report: &resolve::Report) {
    let pairs = report.pairs;
    row(
        &format!("Resolve throughput over bare tonic (median of {pairs} pairs)"),
        format!("{:.3}x", report.throughput),
        ">= 0.95x",
        report.throughput >= 0.95,
    );
    let compared = report.tails_compared;
    row(
        &format!("Resolve p99 at half of saturation (median of {compared} pairs)"),
        report.tail.map_or_else(
            || format!("not compared: calls failed in all {pairs} pairs"),
            |tail| format!("{tail:.3}x ({compared} of {pairs} pairs without failed calls)"),
        ),
        "<= 1.2x",
        report.tail.is_some_and(|tail| tail <= 1.2),
    );
}

fn print_fanout(report: &fanout::Report) {
    let ratio = report.p99.as_secs_f64() / report.baseline.p99.as_secs_f64();
    row(
        "WatchKeys p99, RefreshProvider to every stream",
        format!(
            "{:.1?} over {:.1?}: {ratio:.2}x",
            report.p99, report.baseline.p99
        ),
        "<= 1.2x",
        ratio <= 1.2,
    );
    row(
        "memory per idle WatchKeys stream",
        format!(
            "{:.0} B (bare tonic {:.0} B: {:.2}x)",
            report.per_stream,
            report.baseline.per_stream,
            report.per_stream / report.baseline.per_stream
        ),
        "<= 4096 B",
        report.per_stream <= 4096.0,
    );
}

/// The warm start and memory rows of a scale run, against `start_secs` and `mib`.
fn print_scale(report: &scale::Report, start_secs: f64, mib: u64) {
    let providers = report.providers;
    row(
        &format!("{providers} providers: warm start to SERVING"),
        format!("{:.2?}", report.warm_start),
        &format!("< {start_secs} s"),
        report.warm_start.as_secs_f64() < start_secs,
    );
    row(
        &format!("{providers} providers: resident after the steady state"),
        format!(
            "{} MiB ({} MiB at SERVING)",
            report.steady_mib, report.start_mib
        ),
        &format!("<= {mib} MiB"),
        report.steady_mib <= mib,
    );
}
