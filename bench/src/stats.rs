//! Latency histograms and summaries over repeated runs.

use std::time::Duration;

pub(crate) use client_sim::generator::histogram;
use hdrhistogram::Histogram;
use serde::Serialize;

/// One run's figures.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct RunFigures {
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) throughput_per_s: f64,
    /// CPU time of the server processes per completed operation, in microseconds (0 when
    /// not measured).
    pub(crate) server_cpu_us_per_op: f64,
}

impl RunFigures {
    pub(crate) fn new(latency: &Histogram<u64>, completed: u64, elapsed: Duration) -> Self {
        Self {
            p50_us: latency.value_at_quantile(0.50) as f64 / 1000.0,
            p99_us: latency.value_at_quantile(0.99) as f64 / 1000.0,
            throughput_per_s: completed as f64 / elapsed.as_secs_f64(),
            server_cpu_us_per_op: 0.0,
        }
    }
}

/// Median, minimum and maximum of one figure over several runs.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Spread {
    pub(crate) fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        let median = if v.is_empty() {
            0.0
        } else if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Self {
            median,
            min: v.first().copied().unwrap_or(0.0),
            max: v.last().copied().unwrap_or(0.0),
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} ({:.1}–{:.1})", self.median, self.min, self.max)
    }
}
