//! The tokio runtime a binary runs on. On few cores a `current_thread` runtime avoids
//! cross-thread wake-ups (one hop's latency can halve); `multi_thread` uses every core. Each
//! binary lets its operator choose (`--runtime`, `SWITCHYARD_RUNTIME`); the benchmark harness
//! measures both.

use std::future::Future;

/// Tokio runtime flavour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeFlavor {
    /// One thread runs every task.
    CurrentThread,
    /// A worker thread per core, with work stealing.
    #[default]
    MultiThread,
}

impl RuntimeFlavor {
    /// The flavour as its command-line value.
    pub fn as_arg(self) -> &'static str {
        match self {
            RuntimeFlavor::CurrentThread => "current-thread",
            RuntimeFlavor::MultiThread => "multi-thread",
        }
    }

    /// Builds a runtime of this flavour with I/O and timers.
    pub fn build(self) -> std::io::Result<tokio::runtime::Runtime> {
        match self {
            RuntimeFlavor::CurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            RuntimeFlavor::MultiThread => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build(),
        }
    }

    /// Runs `future` to completion on a new runtime of this flavour.
    pub fn block_on<F: Future>(self, future: F) -> std::io::Result<F::Output> {
        Ok(self.build()?.block_on(future))
    }
}

impl std::fmt::Display for RuntimeFlavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_arg())
    }
}
