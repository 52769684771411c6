//! A session's bounded outbound queue: many writers (responses, pushes, kicks) that never
//! wait, one reader (the connection's writer task).
//!
//! The bound is in bytes and in age, not in frames: a burst of many small pushes to a client
//! that reads is fine, while a client that stops reading is found out by the age of the oldest
//! frame it has not taken, whatever the traffic. (The socket's kernel send buffer behind the
//! queue is capped too, in `transport.rs`, so "not taken" means what it says.)
//!
//! It holds nothing on the heap until the first frame: an idle session is most sessions, and
//! tokio's bounded channel allocates its first 32-slot block up front (about 1.3 KiB per
//! session, measured by `bench s2-idle-memory`).

use std::{
    collections::VecDeque,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use tokio::{sync::Notify, time::Instant};

/// Bytes a queued frame is charged beyond its length (its queue slot and `Bytes` header), so
/// many tiny frames cannot hide behind a byte limit.
pub(crate) const FRAME_OVERHEAD: usize = 48;

/// What the writer task sends.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// One encoded envelope.
    Frame(Bytes),
    /// A push, encoded by the transport as it writes (its payload shared with every other
    /// recipient of the same push, never copied before the socket buffer).
    Push(PushFrame),
    /// Bytes already framed: the rest of a frame the socket took only part of when it was
    /// written in place (TCP only).
    Raw(Bytes),
    /// Close the connection after the frames before this one.
    Close,
}

/// A push envelope not yet encoded.
#[derive(Debug)]
pub(crate) struct PushFrame {
    pub(crate) seq: u64,
    pub(crate) route: u32,
    pub(crate) payload: Bytes,
}

impl Outbound {
    /// Bytes charged to the queue for this item.
    fn cost(&self) -> usize {
        match self {
            Outbound::Frame(frame) => frame.len() + FRAME_OVERHEAD,
            Outbound::Push(push) => push.payload.len() + FRAME_OVERHEAD,
            Outbound::Raw(rest) => rest.len() + FRAME_OVERHEAD,
            Outbound::Close => 0,
        }
    }
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The client is not reading: the queue holds its byte limit, or its oldest frame has
    /// waited longer than the age limit.
    SlowConsumer,
    /// The writer is gone: the connection is closing.
    Closed,
}

/// How much of an item written in place the socket took.
#[derive(Debug)]
pub(crate) enum Written {
    All,
    /// The rest, framed, to go first in the queue.
    Part(Bytes),
    /// Nothing (its buffer is full, or it failed): the item is queued as usual.
    Nothing,
}

/// The bounds of one queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutboxLimits {
    /// Most bytes queued (frames plus [`FRAME_OVERHEAD`] each).
    pub(crate) max_bytes: usize,
    /// Longest a queued frame may wait for the writer.
    pub(crate) max_age: Duration,
}

#[derive(Default)]
struct State {
    /// Items with the time each was queued.
    queue: VecDeque<(Outbound, Instant)>,
    bytes: usize,
    /// The reader stopped for good.
    closed: bool,
    /// The writer took items and has not yet flushed them all to the socket: nothing may be
    /// written in place (it would overtake them).
    writer_busy: bool,
}

/// The queue.
pub(crate) struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    limits: OutboxLimits,
}

impl Outbox {
    pub(crate) fn new(limits: OutboxLimits) -> Self {
        Self {
            state: Mutex::default(),
            ready: Notify::new(),
            limits,
        }
    }

    /// The longest a frame may wait for the writer.
    pub(crate) fn max_age(&self) -> Duration {
        self.limits.max_age
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item` without waiting. `Close` is always taken (it is what a refused queue ends
    /// with); a frame only while the queue is under its byte limit and its oldest frame is
    /// younger than the age limit.
    pub(crate) fn try_send(&self, item: Outbound) -> Result<(), Refused> {
        let now = Instant::now();
        {
            let mut state = self.state();
            if state.closed {
                return Err(Refused::Closed);
            }
            if !matches!(item, Outbound::Close) {
                let cost = item.cost();
                let stale = state
                    .queue
                    .front()
                    .is_some_and(|(_, at)| now.duration_since(*at) > self.limits.max_age);
                if stale || state.bytes + cost > self.limits.max_bytes.max(cost) {
                    return Err(Refused::SlowConsumer);
                }
                state.bytes += cost;
            }
            state.queue.push_back((item, now));
        }
        // Stores a permit when the reader is not waiting, so no wake-up is lost.
        self.ready.notify_one();
        Ok(())
    }

    /// Like [`try_send`](Self::try_send), but when nothing is queued and the writer has
    /// flushed all it took, `write` puts the item straight into the socket, under this queue's
    /// lock so nothing queued meanwhile can overtake it. What the socket does not take is
    /// queued (the rest of a frame first), for the writer.
    pub(crate) fn send_or_write(
        &self,
        item: Outbound,
        write: impl FnOnce(&Outbound) -> Written,
    ) -> Result<(), Refused> {
        {
            let mut state = self.state();
            if state.closed {
                return Err(Refused::Closed);
            }
            if state.queue.is_empty() && !state.writer_busy {
                match write(&item) {
                    Written::All => return Ok(()),
                    Written::Part(rest) => {
                        let rest = Outbound::Raw(rest);
                        state.bytes += rest.cost();
                        state.queue.push_back((rest, Instant::now()));
                        drop(state);
                        self.ready.notify_one();
                        return Ok(());
                    }
                    Written::Nothing => {}
                }
            }
        }
        self.try_send(item)
    }

    /// The next item, if one is queued (taken by the writer, which is busy until
    /// [`flushed`](Self::flushed)).
    pub(crate) fn try_recv(&self) -> Option<Outbound> {
        let mut state = self.state();
        let (item, _) = state.queue.pop_front()?;
        state.bytes -= item.cost();
        state.writer_busy = true;
        Some(item)
    }

    /// The writer flushed everything it took to the socket: with nothing queued, the next item
    /// may be written in place.
    pub(crate) fn flushed(&self) {
        let mut state = self.state();
        if state.queue.is_empty() {
            state.writer_busy = false;
        }
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

    /// Forgets every queued frame (a slow consumer's backlog) and keeps the queue open, so a
    /// last frame (the kick) can still be queued.
    pub(crate) fn clear(&self) {
        let mut state = self.state();
        state.queue = VecDeque::new();
        state.bytes = 0;
    }

    /// The reader is gone: later sends are refused and what is queued is dropped.
    pub(crate) fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.queue = VecDeque::new();
        state.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Outbound {
        Outbound::Frame(Bytes::from(vec![7; len]))
    }

    fn limits(max_bytes: usize, max_age_ms: u64) -> OutboxLimits {
        OutboxLimits {
            max_bytes,
            max_age: Duration::from_millis(max_age_ms),
        }
    }

    fn drain(outbox: &Outbox) -> Vec<String> {
        std::iter::from_fn(|| outbox.try_recv())
            .map(|item| match item {
                Outbound::Frame(f) => format!("frame {}", f.len()),
                Outbound::Push(p) => format!("push {}", p.payload.len()),
                Outbound::Raw(r) => format!("raw {}", r.len()),
                Outbound::Close => "close".to_owned(),
            })
            .collect()
    }

    #[test]
    fn frames_come_out_in_order_up_to_the_byte_limit() {
        let outbox = Outbox::new(limits(2 * (100 + FRAME_OVERHEAD), 60_000));
        assert_eq!(outbox.try_send(frame(100)), Ok(()));
        assert_eq!(outbox.try_send(frame(100)), Ok(()));
        assert_eq!(outbox.try_send(frame(1)), Err(Refused::SlowConsumer));
        // A close still fits: it is how a refused queue ends.
        assert_eq!(outbox.try_send(Outbound::Close), Ok(()));
        assert_eq!(drain(&outbox), ["frame 100", "frame 100", "close"]);
        // Taking frames frees their bytes.
        assert_eq!(outbox.try_send(frame(100)), Ok(()));
    }

    #[test]
    fn a_burst_of_many_small_frames_fits_a_byte_limit_that_a_frame_count_would_not() {
        let outbox = Outbox::new(limits(1 << 20, 60_000));
        for _ in 0..1_500 {
            assert_eq!(outbox.try_send(frame(40)), Ok(()));
        }
        assert_eq!(drain(&outbox).len(), 1_500);
    }

    #[test]
    fn one_frame_larger_than_the_limit_is_taken_into_an_empty_queue() {
        // The byte limit bounds the backlog; a single frame the connection may carry is never
        // refused for its own size (the frame limit decides that, before queueing).
        let outbox = Outbox::new(limits(64, 60_000));
        assert_eq!(outbox.try_send(frame(1000)), Ok(()));
        assert_eq!(outbox.try_send(frame(1)), Err(Refused::SlowConsumer));
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_waiting_longer_than_the_age_limit_marks_a_slow_consumer() {
        let outbox = Outbox::new(limits(1 << 20, 1_000));
        assert_eq!(outbox.try_send(frame(1)), Ok(()));
        tokio::time::advance(Duration::from_millis(900)).await;
        assert_eq!(outbox.try_send(frame(1)), Ok(()), "still young");
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(outbox.try_send(frame(1)), Err(Refused::SlowConsumer));
        // Once the writer takes the old frames, the queue is young again.
        drain(&outbox);
        assert_eq!(outbox.try_send(frame(1)), Ok(()));
    }

    #[test]
    fn a_closed_outbox_refuses_and_forgets() {
        let outbox = Outbox::new(limits(1 << 20, 60_000));
        outbox.try_send(frame(1)).expect("queued");
        outbox.close();
        assert_eq!(outbox.try_send(frame(2)), Err(Refused::Closed));
        assert!(outbox.try_recv().is_none());
    }

    #[test]
    fn a_cleared_outbox_takes_a_last_frame() {
        let outbox = Outbox::new(limits(200, 60_000));
        outbox.try_send(frame(100)).expect("queued");
        assert_eq!(outbox.try_send(frame(100)), Err(Refused::SlowConsumer));
        outbox.clear();
        assert_eq!(outbox.try_send(frame(10)), Ok(()));
        assert_eq!(drain(&outbox), ["frame 10"]);
    }

    #[tokio::test]
    async fn the_reader_wakes_for_a_frame_sent_while_it_was_not_waiting() {
        let outbox = std::sync::Arc::new(Outbox::new(limits(1 << 20, 60_000)));
        outbox.try_send(frame(7)).expect("queued");
        assert!(matches!(outbox.recv().await, Outbound::Frame(_)));
        let sender = outbox.clone();
        let reader = tokio::spawn(async move { outbox.recv().await });
        tokio::task::yield_now().await;
        sender.try_send(Outbound::Close).expect("queued");
        let got = tokio::time::timeout(Duration::from_secs(2), reader)
            .await
            .expect("woken")
            .expect("joined");
        assert!(matches!(got, Outbound::Close));
    }

    #[test]
    fn a_frame_is_written_in_place_only_when_it_overtakes_nothing() {
        let outbox = Outbox::new(limits(1 << 20, 60_000));
        let written = std::cell::RefCell::new(Vec::new());
        let write = |took: Written| {
            let written = &written;
            move |item: &Outbound| {
                if let Outbound::Frame(f) = item {
                    written.borrow_mut().push(f.len());
                }
                took
            }
        };
        // Idle writer, empty queue: in place.
        assert_eq!(outbox.send_or_write(frame(1), write(Written::All)), Ok(()));
        assert_eq!(*written.borrow(), [1]);
        assert!(drain(&outbox).is_empty());
        // The writer has taken an item and not flushed it: queued behind it.
        outbox.try_send(frame(2)).expect("queued");
        assert_eq!(drain(&outbox), ["frame 2"]);
        assert_eq!(outbox.send_or_write(frame(3), write(Written::All)), Ok(()));
        assert_eq!(*written.borrow(), [1], "not written past the writer");
        outbox.flushed();
        assert!(outbox.state().writer_busy, "frame 3 is still queued");
        assert_eq!(drain(&outbox), ["frame 3"]);
        outbox.flushed();
        // The socket takes part of a frame: the rest goes first, and what follows waits.
        assert_eq!(
            outbox.send_or_write(frame(4), write(Written::Part(Bytes::from_static(b"xy")))),
            Ok(())
        );
        assert_eq!(outbox.send_or_write(frame(5), write(Written::All)), Ok(()));
        assert_eq!(*written.borrow(), [1, 4]);
        assert_eq!(drain(&outbox), ["raw 2", "frame 5"]);
        // The socket takes nothing: queued as usual.
        outbox.flushed();
        assert_eq!(
            outbox.send_or_write(frame(6), write(Written::Nothing)),
            Ok(())
        );
        assert_eq!(drain(&outbox), ["frame 6"]);
        // Closed: refused, never written.
        outbox.flushed();
        outbox.close();
        assert_eq!(
            outbox.send_or_write(frame(7), write(Written::All)),
            Err(Refused::Closed)
        );
        assert_eq!(*written.borrow(), [1, 4, 6]);
    }

    #[test]
    fn an_idle_outbox_holds_nothing_on_the_heap() {
        let outbox = Outbox::new(limits(1 << 20, 60_000));
        assert_eq!(outbox.state().queue.capacity(), 0);
    }
}
