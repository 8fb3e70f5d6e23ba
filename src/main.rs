//! The `keyrelay` binary: parse the command line and hand over to the library.

use std::{process::ExitCode, sync::Arc};

use clap::Parser;
use keyrelay::{
    cli::{self, Cli, Command},
    clock::SystemClock,
    observability::telemetry,
    server::Application,
};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of the system allocator: it returns freed memory to the system and
/// frees across threads cheaply (glibc kept about 420 MiB of a 100,000-provider start
/// resident; see BENCHMARKS.md, "Scale of registrations"). The crate's `override` feature
/// makes it the C libraries' `malloc` too, so the embedded SQLite's row values, allocated
/// on its worker thread and freed on a runtime thread, no longer contend for glibc's arena.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve(config) => serve(*config).await,
        Command::Migrate {
            database_url,
            data_dir,
        } => migrate(database_url.as_deref(), &data_dir).await,
        // A client error's message already names its cause: shown once, not again as a chain.
        Command::Client(command) => cli::run(*command)
            .await
            .map_err(|err| anyhow::Error::msg(err.to_string())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: keyrelay::server::config::ServeConfig) -> anyhow::Result<()> {
    let telemetry = telemetry::init(config.log_format);
    keep_to_small_pages();
    let served = async {
        let app = Application::build(config, Arc::new(SystemClock)).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        app.run(shutdown).await
    }
    .await;
    telemetry.shutdown().await;
    Ok(served?)
}

/// Transparent huge pages off for this process: mimalloc asks for them on its arenas, and
/// then every touched byte commits a whole 2 MiB page, while the cache is hundreds of
/// thousands of small objects. With 100,000 providers this kept about 20 MiB more resident
/// and made the start slower (BENCHMARKS.md, "Small pages"). The same as mimalloc's
/// `MIMALLOC_ALLOW_THP=0`, without needing it in the environment.
fn keep_to_small_pages() {
    #[cfg(target_os = "linux")]
    if let Err(err) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(error = %err, "transparent huge pages stay on; expect more resident memory");
    }
}

async fn migrate(database_url: Option<&str>, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let opened = keyrelay::store::open(database_url, data_dir, 1, false).await?;
    opened.store.close().await;
    println!("migrations applied");
    Ok(())
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    shutdown.cancel();
}
