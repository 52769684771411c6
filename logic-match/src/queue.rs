//! The match queues, without IO: one FIFO per mode, one entry per user.

use std::collections::{BTreeMap, HashMap, VecDeque};

use mesh::NodeId;

/// A queued user and the gateway holding them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(crate) user: String,
    pub(crate) gateway: Option<NodeId>,
}

/// Why an enqueue was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum QueueError {
    UnknownMode,
    AlreadyQueued,
}

/// Every mode's queue.
#[derive(Debug, Default)]
pub(crate) struct Queues {
    sizes: BTreeMap<String, usize>,
    queues: HashMap<String, VecDeque<Ticket>>,
    /// Where each queued user is.
    queued: HashMap<String, String>,
    /// Users taken out for placement, and whether they disconnected meanwhile.
    placing: HashMap<String, bool>,
}

impl Queues {
    pub(crate) fn new(sizes: BTreeMap<String, usize>) -> Self {
        Self {
            sizes,
            ..Self::default()
        }
    }

    pub(crate) fn modes(&self) -> impl Iterator<Item = (&String, &usize)> {
        self.sizes.iter()
    }

    /// Queues a user; returns their 1-based position and, when the queue now holds a full
    /// match, the tickets taken out for it.
    pub(crate) fn enqueue(
        &mut self,
        mode: &str,
        ticket: Ticket,
    ) -> Result<(usize, Option<Vec<Ticket>>), QueueError> {
        let size = *self.sizes.get(mode).ok_or(QueueError::UnknownMode)?;
        if self.queued.contains_key(&ticket.user) || self.placing.contains_key(&ticket.user) {
            return Err(QueueError::AlreadyQueued);
        }
        self.queued.insert(ticket.user.clone(), mode.to_owned());
        let queue = self.queues.entry(mode.to_owned()).or_default();
        queue.push_back(ticket);
        let position = queue.len();
        Ok((position, self.take_match(mode, size)))
    }

    fn take_match(&mut self, mode: &str, size: usize) -> Option<Vec<Ticket>> {
        let queue = self.queues.get_mut(mode)?;
        if queue.len() < size.max(1) {
            return None;
        }
        let tickets: Vec<Ticket> = queue.drain(..size.max(1)).collect();
        for ticket in &tickets {
            self.queued.remove(&ticket.user);
            self.placing.insert(ticket.user.clone(), false);
        }
        Some(tickets)
    }

    /// Takes a user out of the queue; true if they were queued.
    pub(crate) fn cancel(&mut self, user: &str) -> bool {
        let Some(mode) = self.queued.remove(user) else {
            return false;
        };
        if let Some(queue) = self.queues.get_mut(&mode) {
            queue.retain(|t| t.user != user);
        }
        true
    }

    /// A user's session closed: out of the queue, or marked if being placed.
    pub(crate) fn disconnected(&mut self, user: &str) -> bool {
        if let Some(gone) = self.placing.get_mut(user) {
            *gone = true;
            return true;
        }
        self.cancel(user)
    }

    /// A gateway was lost for good: the users it held leave their queues. Returns them.
    pub(crate) fn forget_gateway(&mut self, gateway: &NodeId) -> Vec<String> {
        let mut forgotten = Vec::new();
        for queue in self.queues.values_mut() {
            queue.retain(|ticket| {
                let held = ticket.gateway.as_ref() == Some(gateway);
                if held {
                    forgotten.push(ticket.user.clone());
                }
                !held
            });
        }
        for user in &forgotten {
            self.queued.remove(user);
        }
        forgotten
    }

    /// A placement ended: its users are no longer being placed.
    pub(crate) fn placed(&mut self, tickets: &[Ticket]) {
        for ticket in tickets {
            self.placing.remove(&ticket.user);
        }
    }

    /// A placement failed: its users go back to the front of the queue, in their order, except
    /// those who disconnected meanwhile. Returns a match if one forms again.
    pub(crate) fn requeue(&mut self, mode: &str, tickets: Vec<Ticket>) -> Option<Vec<Ticket>> {
        let size = *self.sizes.get(mode)?;
        let queue = self.queues.entry(mode.to_owned()).or_default();
        let mut back = Vec::new();
        for ticket in tickets {
            if self.placing.remove(&ticket.user) == Some(false) {
                back.push(ticket);
            }
        }
        for ticket in back.into_iter().rev() {
            self.queued.insert(ticket.user.clone(), mode.to_owned());
            queue.push_front(ticket);
        }
        self.take_match(mode, size)
    }

    /// How many users wait in any queue.
    pub(crate) fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Empties every queue: the tickets that were waiting, with their modes.
    pub(crate) fn drain_all(&mut self) -> Vec<(String, Ticket)> {
        self.queued.clear();
        let mut drained = Vec::new();
        for (mode, queue) in &mut self.queues {
            drained.extend(queue.drain(..).map(|t| (mode.clone(), t)));
        }
        drained
    }

    /// Users waiting, by mode.
    pub(crate) fn waiting(&self) -> usize {
        self.queued.len()
    }

    #[cfg(test)]
    fn users(&self, mode: &str) -> Vec<&str> {
        self.queues
            .get(mode)
            .map(|q| q.iter().map(|t| t.user.as_str()).collect())
            .unwrap_or_default()
    }
}

/// Parses `duel=2,squad=4`.
pub(crate) fn parse_modes(text: &str) -> Result<BTreeMap<String, usize>, String> {
    let mut modes = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, size) = part
            .split_once('=')
            .ok_or_else(|| format!("mode {part:?} is not name=size"))?;
        let size: usize = size
            .trim()
            .parse()
            .map_err(|_| format!("bad size in {part:?}"))?;
        if size == 0 || size > 1000 {
            return Err(format!("size of {name:?} must be 1 to 1000"));
        }
        modes.insert(name.trim().to_owned(), size);
    }
    if modes.is_empty() {
        return Err("no modes configured".into());
    }
    Ok(modes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(user: &str) -> Ticket {
        Ticket {
            user: user.into(),
            gateway: None,
        }
    }

    fn queues() -> Queues {
        Queues::new(parse_modes("duel=2,trio=3").expect("valid"))
    }

    #[test]
    fn players_held_by_a_lost_gateway_leave_their_queues() {
        let mut q = queues();
        let at = |user: &str, gateway: &str| Ticket {
            user: user.into(),
            gateway: Some(NodeId::new(gateway)),
        };
        assert!(q.enqueue("trio", at("a", "g1")).is_ok());
        assert!(q.enqueue("trio", at("b", "g2")).is_ok());
        assert!(q.enqueue("duel", at("c", "g1")).is_ok());
        let mut gone = q.forget_gateway(&NodeId::new("g1"));
        gone.sort();
        assert_eq!(gone, ["a", "c"]);
        // They may queue again (through another gateway); b is still first in line.
        assert_eq!(q.enqueue("trio", at("a", "g2")), Ok((2, None)));
        assert!(!q.cancel("c"));
    }

    #[test]
    fn a_full_queue_forms_a_match_in_arrival_order() {
        let mut q = queues();
        assert_eq!(q.enqueue("trio", ticket("a")), Ok((1, None)));
        assert_eq!(q.enqueue("trio", ticket("b")), Ok((2, None)));
        let (position, formed) = q.enqueue("trio", ticket("c")).expect("queued");
        assert_eq!(position, 3);
        let formed: Vec<String> = formed
            .expect("a match")
            .into_iter()
            .map(|t| t.user)
            .collect();
        assert_eq!(formed, vec!["a", "b", "c"]);
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn one_entry_per_user_and_known_modes_only() {
        let mut q = queues();
        q.enqueue("trio", ticket("a")).expect("queued");
        assert_eq!(
            q.enqueue("trio", ticket("a")),
            Err(QueueError::AlreadyQueued)
        );
        assert_eq!(
            q.enqueue("duel", ticket("a")),
            Err(QueueError::AlreadyQueued)
        );
        assert_eq!(
            q.enqueue("chess", ticket("b")),
            Err(QueueError::UnknownMode)
        );
    }

    #[test]
    fn cancel_and_disconnect_leave_the_queue() {
        let mut q = queues();
        q.enqueue("trio", ticket("a")).expect("queued");
        q.enqueue("trio", ticket("b")).expect("queued");
        assert!(q.cancel("a"));
        assert!(!q.cancel("a"));
        assert!(q.disconnected("b"));
        assert_eq!(q.users("trio"), Vec::<&str>::new());
        // A user can queue again after leaving.
        assert_eq!(q.enqueue("trio", ticket("a")), Ok((1, None)));
    }

    #[test]
    fn a_failed_placement_requeues_at_the_front_without_the_disconnected() {
        let mut q = queues();
        q.enqueue("duel", ticket("a")).expect("queued");
        let (_, formed) = q.enqueue("duel", ticket("b")).expect("queued");
        let formed = formed.expect("a match");
        q.enqueue("duel", ticket("c")).expect("queued");
        assert_eq!(
            q.enqueue("duel", ticket("a")),
            Err(QueueError::AlreadyQueued),
            "being placed counts as queued"
        );
        assert!(q.disconnected("b"));
        assert_eq!(
            q.requeue("duel", formed),
            Some(vec![ticket("a"), ticket("c")]),
            "a goes first again and pairs with c"
        );
        let mut q = queues();
        q.enqueue("duel", ticket("x")).expect("queued");
        let (_, formed) = q.enqueue("duel", ticket("y")).expect("queued");
        q.placed(&formed.expect("a match"));
        assert_eq!(
            q.enqueue("duel", ticket("x")),
            Ok((1, None)),
            "placed users may queue again"
        );
    }

    #[test]
    fn draining_empties_every_queue() {
        let mut q = queues();
        q.enqueue("duel", ticket("a")).expect("queued");
        q.enqueue("trio", ticket("b")).expect("queued");
        let mut drained: Vec<(String, String)> = q
            .drain_all()
            .into_iter()
            .map(|(m, t)| (m, t.user))
            .collect();
        drained.sort();
        assert_eq!(
            drained,
            vec![("duel".into(), "a".into()), ("trio".into(), "b".into())]
        );
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn modes_parse() {
        assert_eq!(
            parse_modes("duel=2, squad=4").expect("valid").get("squad"),
            Some(&4)
        );
        assert!(parse_modes("duel").is_err());
        assert!(parse_modes("duel=0").is_err());
        assert!(parse_modes("").is_err());
    }
}
