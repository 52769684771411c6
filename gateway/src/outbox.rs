//! A session's bounded outbound queue: many writers (responses, pushes, kicks) that never
//! wait, one reader (the connection's writer task).
//!
//! It holds nothing on the heap until the first frame: an idle session is most sessions, and
//! tokio's bounded channel allocates its first 32-slot block up front (about 1.3 KiB per
//! session, measured by `bench s2-idle-memory`).

use std::{
    collections::VecDeque,
    sync::{Mutex, MutexGuard, PoisonError},
};

use bytes::Bytes;
use tokio::sync::Notify;

/// What the writer task sends.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// One encoded envelope.
    Frame(Bytes),
    /// Close the connection after the frames before this one.
    Close,
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue holds its maximum: the client is not reading.
    Full,
    /// The writer is gone: the connection is closing.
    Closed,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Outbound>,
    /// The reader stopped for good.
    closed: bool,
}

/// The queue.
pub(crate) struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    capacity: usize,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::default(),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item` without waiting. `Close` is always taken (it is what a full queue ends
    /// with), frames only below the capacity.
    pub(crate) fn try_send(&self, item: Outbound) -> Result<(), Refused> {
        {
            let mut state = self.state();
            if state.closed {
                return Err(Refused::Closed);
            }
            if matches!(item, Outbound::Frame(_)) && state.queue.len() >= self.capacity {
                return Err(Refused::Full);
            }
            state.queue.push_back(item);
        }
        // Stores a permit when the reader is not waiting, so no wake-up is lost.
        self.ready.notify_one();
        Ok(())
    }

    /// The next item, if one is queued.
    pub(crate) fn try_recv(&self) -> Option<Outbound> {
        self.state().queue.pop_front()
    }

    /// Waits for the next item.
    pub(crate) async fn recv(&self) -> Outbound {
        loop {
            if let Some(item) = self.try_recv() {
                return item;
            }
            self.ready.notified().await;
        }
    }

    /// The reader is gone: later sends are refused and what is queued is dropped.
    pub(crate) fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.queue = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8) -> Outbound {
        Outbound::Frame(Bytes::from(vec![n]))
    }

    #[test]
    fn frames_come_out_in_order_up_to_the_capacity() {
        let outbox = Outbox::new(2);
        assert_eq!(outbox.try_send(frame(1)), Ok(()));
        assert_eq!(outbox.try_send(frame(2)), Ok(()));
        assert_eq!(outbox.try_send(frame(3)), Err(Refused::Full));
        // A close still fits: it is how a full queue ends.
        assert_eq!(outbox.try_send(Outbound::Close), Ok(()));
        let order: Vec<String> = std::iter::from_fn(|| outbox.try_recv())
            .map(|item| format!("{item:?}"))
            .collect();
        assert_eq!(
            order,
            [
                format!("{:?}", frame(1)),
                format!("{:?}", frame(2)),
                "Close".to_owned()
            ]
        );
    }

    #[test]
    fn a_closed_outbox_refuses_and_forgets() {
        let outbox = Outbox::new(4);
        outbox.try_send(frame(1)).expect("queued");
        outbox.close();
        assert_eq!(outbox.try_send(frame(2)), Err(Refused::Closed));
        assert!(outbox.try_recv().is_none());
    }

    #[tokio::test]
    async fn the_reader_wakes_for_a_frame_sent_while_it_was_not_waiting() {
        let outbox = std::sync::Arc::new(Outbox::new(4));
        outbox.try_send(frame(7)).expect("queued");
        assert!(matches!(outbox.recv().await, Outbound::Frame(_)));
        let sender = outbox.clone();
        let reader = tokio::spawn(async move { outbox.recv().await });
        tokio::task::yield_now().await;
        sender.try_send(Outbound::Close).expect("queued");
        let got = tokio::time::timeout(std::time::Duration::from_secs(2), reader)
            .await
            .expect("woken")
            .expect("joined");
        assert!(matches!(got, Outbound::Close));
    }

    #[test]
    fn an_idle_outbox_holds_nothing_on_the_heap() {
        let outbox = Outbox::new(1024);
        assert_eq!(outbox.state().queue.capacity(), 0);
    }
}
