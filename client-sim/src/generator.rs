//! The load generator's engine: drives already connected clients in closed loop (one request
//! in flight per connection) or open loop (requests on a fixed schedule whatever the responses
//! do; latency counts from the scheduled send time, so queueing shows), and records latency in
//! an HdrHistogram. `client-sim load` and the benchmark harness (`bench/`) both drive servers
//! with it.
//!
//! The generator watches itself: in open loop it records how late each request left against
//! its schedule. A generator that cannot keep its own schedule measures itself, not the server;
//! [`Outcome::generator_behind`] says so, and the harness marks such results.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use client::{Client, ClientError, Response};
use futures::{StreamExt, stream::FuturesUnordered};
use hdrhistogram::Histogram;
use tokio::sync::Barrier;

/// How requests are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// Each connection sends its next request when the previous response arrives.
    Closed,
    /// Requests leave on a fixed schedule: `rate_per_s` in total, spread evenly over the
    /// connections.
    Open {
        /// Requests per second over all connections.
        rate_per_s: f64,
    },
}

/// What one request is: its route and payload, chosen per connection.
pub type MakeRequest = Arc<dyn Fn(usize) -> (u32, Bytes) + Send + Sync>;

/// Figures of one drive.
#[derive(Debug)]
pub struct Outcome {
    /// Latency of successful requests, nanoseconds.
    pub latency: Histogram<u64>,
    /// Successful requests.
    pub completed: u64,
    /// Failed requests by status name, or `transport: ...`.
    pub errors: BTreeMap<String, u64>,
    /// Length of the measured phase (start to last response or deadline).
    pub elapsed: Duration,
    /// Requests the schedule asked for (open loop) or sent (closed loop).
    pub scheduled: u64,
    /// How late requests left against their schedule, nanoseconds (open loop only).
    pub send_lag: Histogram<u64>,
}

/// Send lag (p99) above which the generator did not keep its own schedule (tokio timers tick
/// in milliseconds, so a lag under about 1 ms is the timer, not the generator).
pub const BEHIND_SCHEDULE: Duration = Duration::from_millis(3);

impl Outcome {
    /// Successful requests per second.
    pub fn throughput_per_s(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency percentile in microseconds.
    pub fn latency_us(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// Failed requests.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// True when the generator fell behind its own open-loop schedule (its p99 send lag was
    /// over [`BEHIND_SCHEDULE`]): its figures then describe the generator, not the server.
    pub fn generator_behind(&self) -> bool {
        !self.send_lag.is_empty()
            && self.send_lag.value_at_quantile(0.99) > BEHIND_SCHEDULE.as_nanos() as u64
    }
}

/// A latency histogram in nanoseconds (1 ns to 120 s, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("valid histogram bounds")
}

/// Drives `clients` for `duration`, each request made by `make(connection index)`.
pub async fn drive(
    clients: &[Client],
    pace: Pace,
    duration: Duration,
    make: MakeRequest,
) -> Outcome {
    let start_line = Arc::new(Barrier::new(clients.len() + 1));
    let per_connection_hz = match pace {
        Pace::Closed => None,
        Pace::Open { rate_per_s } => Some(rate_per_s / clients.len().max(1) as f64),
    };
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, client)| {
            let (client, make, start_line) = (client.clone(), make.clone(), start_line.clone());
            let offset = i as f64 / clients.len().max(1) as f64;
            tokio::spawn(async move {
                start_line.wait().await;
                match per_connection_hz {
                    None => closed_loop(&client, i, &make, duration).await,
                    Some(hz) => open_loop(&client, i, &make, duration, hz, offset).await,
                }
            })
        })
        .collect();
    start_line.wait().await;
    let started = Instant::now();
    let mut outcome = Outcome {
        latency: histogram(),
        completed: 0,
        errors: BTreeMap::new(),
        elapsed: Duration::ZERO,
        scheduled: 0,
        send_lag: histogram(),
    };
    for task in tasks {
        match task.await {
            Ok(part) => {
                let _ = outcome.latency.add(&part.latency);
                let _ = outcome.send_lag.add(&part.send_lag);
                outcome.completed += part.completed;
                outcome.scheduled += part.scheduled;
                for (name, n) in part.errors {
                    *outcome.errors.entry(name).or_default() += n;
                }
            }
            Err(error) => *outcome.errors.entry(format!("task: {error}")).or_default() += 1,
        }
    }
    // Closed loop ends at the deadline plus the last round trip; open loop at the deadline
    // plus the slowest response. Throughput is counted over the planned duration at least.
    outcome.elapsed = started.elapsed().max(duration);
    outcome
}

async fn closed_loop(
    client: &Client,
    connection: usize,
    make: &MakeRequest,
    duration: Duration,
) -> Outcome {
    let mut part = empty();
    let stop_at = Instant::now() + duration;
    while Instant::now() < stop_at {
        let (route, payload) = make(connection);
        let sent = Instant::now();
        let result = client.request(route, payload).await;
        part.scheduled += 1;
        part.record(result, sent.elapsed());
    }
    part
}

async fn open_loop(
    client: &Client,
    connection: usize,
    make: &MakeRequest,
    duration: Duration,
    hz: f64,
    offset: f64,
) -> Outcome {
    let mut part = empty();
    let every = Duration::from_secs_f64(1.0 / hz.max(1e-3));
    let start = Instant::now();
    let stop_at = start + duration;
    // Connections start spread over one period so their requests do not leave in bursts.
    let mut next = start + every.mul_f64(offset);
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            Some((result, latency)) = in_flight.next(), if !in_flight.is_empty() => {
                part.record(result, latency);
            }
            _ = tokio::time::sleep_until(next.into()), if next < stop_at => {
                let scheduled = next;
                let lag = Instant::now().saturating_duration_since(scheduled);
                part.send_lag.saturating_record(lag.as_nanos() as u64);
                part.scheduled += 1;
                let (route, payload) = make(connection);
                let client = client.clone();
                in_flight.push(async move {
                    let result = client.request(route, payload).await;
                    (result, scheduled.elapsed())
                });
                next += every;
            }
            else => break,
        }
    }
    part
}

fn empty() -> Outcome {
    Outcome {
        latency: histogram(),
        completed: 0,
        errors: BTreeMap::new(),
        elapsed: Duration::ZERO,
        scheduled: 0,
        send_lag: histogram(),
    }
}

impl Outcome {
    fn record(&mut self, result: Result<Response, ClientError>, latency: Duration) {
        match result {
            Ok(response) if response.is_ok() => {
                self.latency.saturating_record(latency.as_nanos() as u64);
                self.completed += 1;
            }
            Ok(response) => {
                *self
                    .errors
                    .entry(wire::envelope::code_name(response.status).to_owned())
                    .or_default() += 1;
            }
            Err(error) => {
                *self
                    .errors
                    .entry(format!("transport: {error}"))
                    .or_default() += 1;
            }
        }
    }
}
