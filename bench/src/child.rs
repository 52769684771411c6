//! Server processes the harness starts: it runs itself with a hidden subcommand, so nothing but
//! this binary needs to be built. A child prints one `READY key=value ...` line on stdout.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use anyhow::{Context, bail};

/// A running child process, killed on drop.
pub(crate) struct ChildProcess {
    child: Child,
    pub(crate) ready: HashMap<String, String>,
}

impl ChildProcess {
    pub(crate) fn spawn(args: &[&str]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the bench binary")?;
        Self::spawn_program(&exe, args)
    }

    /// Starts another program that speaks the same `READY key=value ...` line.
    pub(crate) fn spawn_program(exe: &std::path::Path, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(exe)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning a bench server")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(rest) = line.trim().strip_prefix("READY ") else {
            let _ = child.kill();
            bail!("bench server {args:?} did not start: {line:?}");
        };
        let ready = rest
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(Self { child, ready })
    }

    /// The process id (for CPU and memory accounting).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn get(&self, key: &str) -> anyhow::Result<&str> {
        self.ready
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("child did not report {key}"))
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
