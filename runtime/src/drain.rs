//! Drains on request. A node drains on SIGTERM (for good: it leaves when the drain is done) or
//! when an operator asks (the admin HTTP endpoint or the gRPC `Admin` service): then it goes
//! offline at once, lets the server move what it holds, and leaves once it holds nothing or
//! the grace ends, unless the operator cancels (`Undrain`) first: the node is online again
//! and keeps whatever has not moved. A drain that can no longer be cancelled (SIGTERM arrived,
//! or the grace ended) is `stopping`.

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

/// What a server's drain function is given.
#[derive(Clone, Debug)]
pub struct Drain {
    /// The grace announced to clients: the server moves what it holds within it.
    pub grace: Duration,
    /// Cancelled when the operator cancels the drain: stop moving things, keep the rest.
    /// Never cancelled for a SIGTERM drain.
    pub undrain: CancellationToken,
    /// Asked for through the admin API (so it may be cancelled), not by SIGTERM.
    pub requested: bool,
}

/// How waiting out a requested drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// The operator cancelled the drain: keep everything, the node is back online.
    Undrained,
    /// Go on with the drain (nothing left, the grace ended, or a SIGTERM drain).
    Proceed,
}

impl Drain {
    /// For a requested drain of a server that cannot move its work elsewhere: waits while
    /// `busy()` (work ends by itself: players leave, offline means nothing new arrives), at most
    /// for the grace, unless the drain is cancelled. A SIGTERM drain proceeds at once.
    pub async fn hold_while(&self, mut busy: impl FnMut() -> bool) -> Held {
        if !self.requested {
            return Held::Proceed;
        }
        let deadline = Instant::now() + self.grace;
        while busy() && Instant::now() < deadline {
            tokio::select! {
                _ = self.undrain.cancelled() => return Held::Undrained,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        if self.undrain.is_cancelled() {
            Held::Undrained
        } else {
            Held::Proceed
        }
    }
}

/// Where a node's drain stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainState {
    /// Serving; not draining.
    Online,
    /// Draining on request; can be cancelled.
    Draining,
    /// Draining for good (SIGTERM, or the grace ended): the node leaves next.
    Stopping,
}

impl DrainState {
    /// The state's name in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            DrainState::Online => "online",
            DrainState::Draining => "draining",
            DrainState::Stopping => "stopping",
        }
    }
}

/// Why a drain request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DrainRefused {
    /// Undrain: the drain can no longer be cancelled.
    #[error("the drain can no longer be cancelled (the node is stopping)")]
    Stopping,
    /// Undrain: nothing to cancel.
    #[error("the node is not draining")]
    NotDraining,
}

/// A drain's state as the admin API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainStatus {
    pub state: DrainState,
    /// Time left of the grace while draining.
    pub grace_left: Duration,
}

struct Phase {
    state: DrainState,
    until: Option<Instant>,
    undrain: CancellationToken,
    /// A requested drain not yet started by the node's run loop.
    requested: Option<Duration>,
}

/// The node's drain switch, shared by the run loop and the admin endpoints.
#[derive(Clone)]
pub struct DrainControl {
    phase: Arc<Mutex<Phase>>,
    wake: Arc<Notify>,
    default_grace: Duration,
}

impl DrainControl {
    pub(crate) fn new(default_grace: Duration) -> Self {
        Self {
            phase: Arc::new(Mutex::new(Phase {
                state: DrainState::Online,
                until: None,
                undrain: CancellationToken::new(),
                requested: None,
            })),
            wake: Arc::new(Notify::new()),
            default_grace,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where the drain stands.
    pub fn status(&self) -> DrainStatus {
        let phase = self.lock();
        DrainStatus {
            state: phase.state,
            grace_left: phase.until.map_or(Duration::ZERO, |until| {
                until.saturating_duration_since(Instant::now())
            }),
        }
    }

    /// Asks for a drain with `grace` (the node's own when `None`); a node draining already
    /// keeps its drain.
    pub fn drain(&self, grace: Option<Duration>) -> DrainStatus {
        {
            let mut phase = self.lock();
            if phase.state == DrainState::Online {
                let grace = grace.unwrap_or(self.default_grace);
                phase.state = DrainState::Draining;
                phase.until = Some(Instant::now() + grace);
                phase.undrain = CancellationToken::new();
                phase.requested = Some(grace);
            }
        }
        self.wake.notify_one();
        self.status()
    }

    /// Cancels a requested drain: the node returns online.
    pub fn undrain(&self) -> Result<DrainStatus, DrainRefused> {
        {
            let mut phase = self.lock();
            match phase.state {
                DrainState::Online => return Err(DrainRefused::NotDraining),
                DrainState::Stopping => return Err(DrainRefused::Stopping),
                DrainState::Draining => {
                    phase.undrain.cancel();
                    phase.requested = None;
                }
            }
        }
        self.wake.notify_one();
        Ok(self.status())
    }

    /// The next requested drain (for the run loop): its grace and cancel token.
    pub(crate) async fn requested(&self) -> Drain {
        loop {
            let woken = self.wake.notified();
            {
                let mut phase = self.lock();
                if let Some(grace) = phase.requested.take() {
                    return Drain {
                        grace,
                        undrain: phase.undrain.clone(),
                        requested: true,
                    };
                }
            }
            woken.await;
        }
    }

    /// The run loop saw the drain cancelled: online again.
    pub(crate) fn back_online(&self) {
        let mut phase = self.lock();
        if phase.state == DrainState::Draining {
            phase.state = DrainState::Online;
            phase.until = None;
        }
    }

    /// The drain goes on for good (SIGTERM, or its grace ended); `grace` for a SIGTERM drain
    /// that starts now.
    pub(crate) fn stopping(&self, grace: Option<Duration>) {
        let mut phase = self.lock();
        phase.state = DrainState::Stopping;
        phase.requested = None;
        if let Some(grace) = grace {
            phase.until = Some(Instant::now() + grace);
        }
    }
}
