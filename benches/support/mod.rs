//! What the benches share: a `keyrelay serve` child process on a free loopback port, settings
//! from the environment, a process's CPU time and memory from /proc, baseline servers (this
//! binary, re-executed), replicas on Postgres (`fleet`), and the comparisons against the
//! stack's own limit that both their own benches and `limits` run (`resolve`, `fanout`,
//! `scale`). Each bench uses a part of it, hence `allow(dead_code)` where it is included.

pub mod fanout;
pub mod fleet;
pub mod resolve;
pub mod scale;

use std::{
    future::Future,
    net::TcpListener,
    path::Path,
    pin::Pin,
    process::{Child, Command, Stdio},
    str::FromStr,
    time::Duration,
};

/// The allocator keyrelay's binary runs on (see `src/main.rs`), so that a baseline server,
/// this binary re-executed, is measured on the same stack: on glibc's allocator the bare
/// tonic stream server held 5,158 B per idle stream against 8,672 B on mimalloc (medians of
/// four alternating runs, BENCHMARKS.md), which made keyrelay look 1.3x worse than it is.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The admin token of every bench server.
pub const TOKEN: &str = "bench-token";

/// A child process, killed when dropped.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `name` from the environment, or `default`.
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `keyrelay serve` on the embedded store in `data_dir`, gRPC on `port`, HTTP on a random
/// port, admin token `TOKEN`, loopback IdPs allowed, plus `extra` flags.
pub fn keyrelay(port: u16, data_dir: &Path, extra: &[&str]) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_keyrelay"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--http-listen", "127.0.0.1:0", "--admin-token", TOKEN])
        .args(["--dev-allow-http-loopback", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .spawn()
        .expect("start keyrelay");
    Server(child)
}

/// CPU time (user + system) a process has used, from /proc/<pid>/stat; `pid` may be `self`.
pub fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    let after_name = &stat[stat.rfind(')').expect("comm field") + 2..];
    let ticks: u64 = after_name
        .split(' ')
        .skip(11)
        .take(2)
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    // Clock ticks are 1/100 s on Linux.
    Duration::from_millis(ticks * 10)
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

/// A baseline server's run, as a future.
pub type Serving = Pin<Box<dyn Future<Output = ()>>>;

/// A baseline server: the environment variable that makes the bench binary one (its value is
/// the file the server answers from), and how it serves that file on a port.
pub struct BaselineRole {
    pub env: &'static str,
    pub serve: fn(String, u16) -> Serving,
}

/// Runs `bench` on a multi-threaded runtime or, when this process is one of `roles` (its
/// variable set in the environment, see `baseline`), that baseline server.
pub fn main_or_baseline<B>(roles: &[BaselineRole], bench: impl FnOnce() -> B)
where
    B: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let role = roles
        .iter()
        .find_map(|role| Some((role, std::env::var(role.env).ok()?)));
    match role {
        Some((role, path)) => {
            runtime.block_on((role.serve)(path, env_or("KEYRELAY_BENCH_PORT", 0)));
        }
        None => runtime.block_on(bench()),
    }
}

/// This bench binary again, as the `role` baseline server on `port`, answering from `path`.
pub fn baseline(role: &BaselineRole, path: &Path, port: u16) -> Server {
    let child = Command::new(std::env::current_exe().expect("this bench binary"))
        .env(role.env, path)
        .env("KEYRELAY_BENCH_PORT", port.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the baseline");
    Server(child)
}
