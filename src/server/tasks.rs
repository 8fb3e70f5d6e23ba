//! The server's background tasks, each with a name: spawned as the server starts, all told
//! to stop by one shutdown signal, and awaited before the store closes.

use tokio::task::JoinHandle;

/// Named background tasks.
#[derive(Default)]
pub(super) struct Tasks(Vec<(&'static str, JoinHandle<()>)>);

impl Tasks {
    /// Runs `task` in the background as `name`.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.0.push((name, tokio::spawn(task)));
    }

    /// Adds tasks started elsewhere (the TLS listener's).
    pub fn extend(&mut self, tasks: impl IntoIterator<Item = (&'static str, JoinHandle<()>)>) {
        self.0.extend(tasks);
    }

    /// Waits for every task; a panic is logged with the task's name.
    pub async fn join(self) {
        for (name, task) in self.0 {
            if task.await.is_err() {
                tracing::error!(task = name, "background task panicked");
            }
        }
    }
}
