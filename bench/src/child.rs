//! Processes the harness starts: it runs itself with a hidden subcommand (or the Go baseline's
//! programs), so nothing but this binary needs to be built. A child prints one
//! `READY key=value ...` line on stdout; load generator children then take commands on stdin
//! and answer on stdout, one line each.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use anyhow::{Context, bail};

/// A running child process, killed on drop.
pub(crate) struct ChildProcess {
    child: Child,
    pub(crate) ready: HashMap<String, String>,
    stdin: Option<ChildStdin>,
    /// Held for the child's lifetime, so its later output never meets a closed pipe.
    stdout: BufReader<ChildStdout>,
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
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {}", exe.display()))?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let Some(rest) = line.trim().strip_prefix("READY") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} {args:?} did not start: {line:?}", exe.display());
        };
        let ready = rest
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(Self {
            child,
            ready,
            stdin,
            stdout,
        })
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

    /// Sends one command line.
    pub(crate) fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("child stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Reads the next output line (blocking).
    pub(crate) fn read_line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        anyhow::ensure!(
            self.stdout.read_line(&mut line)? > 0,
            "child {} exited",
            self.pid()
        );
        Ok(line.trim_end().to_owned())
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
