//! The session table of this gateway, with an index by user id and the login order.
//!
//! Two logins of one user are ordered by their [`LoginStamp`]: time, then gateway node id, then
//! this gateway's login counter. No two stamps are equal, so between any two sessions of a user
//! exactly one is newer, and the newer one is the one that stays, on whichever gateway it is.

use std::{
    cmp::Ordering as CmpOrdering,
    collections::HashMap,
    sync::{Arc, Mutex},
};

use mesh::NodeId;
use proto::gateway::v1 as pb;
use tokio::sync::Notify;

use crate::{refusal::Refusal, session::Session};

/// When a session logged in, as a total order (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LoginStamp {
    pub(crate) at_ms: u64,
    pub(crate) gateway: NodeId,
    pub(crate) seq: u64,
}

impl Ord for LoginStamp {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (self.at_ms, &self.gateway, self.seq).cmp(&(other.at_ms, &other.gateway, other.seq))
    }
}

impl PartialOrd for LoginStamp {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl LoginStamp {
    pub(crate) fn to_proto(&self) -> pb::LoginStamp {
        pb::LoginStamp {
            at_ms: self.at_ms,
            gateway_node: self.gateway.to_string(),
            seq: self.seq,
        }
    }

    pub(crate) fn from_proto(stamp: &pb::LoginStamp) -> Self {
        Self {
            at_ms: stamp.at_ms,
            gateway: NodeId::new(stamp.gateway_node.as_str()),
            seq: stamp.seq,
        }
    }
}

/// What a login did to the table.
pub(crate) enum Login {
    /// The session was already logged in as this user: nothing changed.
    Again,
    /// The session is now the user's; `displaced` is the user's older session here, if any
    /// (the caller kicks it).
    New {
        stamp: LoginStamp,
        displaced: Option<Arc<Session>>,
    },
}

/// What a kick of older logins found for one user.
pub(crate) enum Older {
    /// The user's session here logged in before the stamp: the caller kicks it.
    Found(Arc<Session>),
    /// The user's session here logged in after the stamp: it stays.
    NewerHere,
    /// No session of the user here.
    None,
}

#[derive(Default)]
struct Index {
    by_id: HashMap<u64, Arc<Session>>,
    by_user: HashMap<Arc<str>, u64>,
    /// Time of the last login stamp given, so stamps never go back on this gateway.
    last_login_ms: u64,
    logins: u64,
}

/// Every session on this gateway (carried by a connection, or held for a resume).
#[derive(Default)]
pub(crate) struct Sessions {
    index: Mutex<Index>,
    /// Signalled whenever a session is added or removed (drain waits on it).
    changed: Notify,
}

impl Sessions {
    /// A new session id: random, so ids are unique across the cluster (sessions move between
    /// gateways) and say nothing about their gateway or their number.
    pub(crate) fn new_id(&self) -> u64 {
        loop {
            let id = rand::random::<u64>();
            if id != 0 && !self.lock().by_id.contains_key(&id) {
                return id;
            }
        }
    }

    /// Adds a session; returns how many there are now.
    pub(crate) fn insert(&self, session: Arc<Session>) -> usize {
        let count = {
            let mut index = self.lock();
            index.by_id.insert(session.id, session);
            index.by_id.len()
        };
        self.changed.notify_waiters();
        count
    }

    /// The session with this id, if held here.
    pub(crate) fn by_id(&self, id: u64) -> Option<Arc<Session>> {
        self.lock().by_id.get(&id).cloned()
    }

    /// Removes a session (and its user index entry if it still points here); returns how many
    /// sessions remain.
    pub(crate) fn remove(&self, session: &Session) -> usize {
        let count = {
            let mut index = self.lock();
            index.by_id.remove(&session.id);
            if let Some(user) = session.user()
                && index.by_user.get(&user) == Some(&session.id)
            {
                index.by_user.remove(&user);
            }
            index.by_id.len()
        };
        self.changed.notify_waiters();
        count
    }

    /// Waits until the table changes (register interest, then check the condition, then await:
    /// `let changed = sessions.changed(); if done { .. } changed.await`).
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Attaches `user` to `session`, stamped as this gateway's newest login. A session logged
    /// in as another user is refused (`ALREADY_LOGGED_IN`); the same user again changes
    /// nothing.
    pub(crate) fn login(
        &self,
        session: &Arc<Session>,
        user: Arc<str>,
        gateway: &NodeId,
        now_ms: u64,
    ) -> Result<Login, Refusal> {
        let mut index = self.lock();
        let mut state = session.state();
        match &state.user {
            Some(current) if *current == user => return Ok(Login::Again),
            Some(_) => return Err(Refusal::AlreadyLoggedIn),
            None => {}
        }
        index.last_login_ms = index.last_login_ms.max(now_ms);
        index.logins += 1;
        let stamp = LoginStamp {
            at_ms: index.last_login_ms,
            gateway: gateway.clone(),
            seq: index.logins,
        };
        state.user = Some(user.clone());
        state.login = Some(stamp.clone());
        state.login_pending = true;
        drop(state);
        let displaced = index
            .by_user
            .insert(user, session.id)
            .filter(|id| *id != session.id)
            .and_then(|id| index.by_id.get(&id).cloned());
        Ok(Login::New { stamp, displaced })
    }

    /// The user's session here, compared with a login elsewhere stamped `stamp`.
    pub(crate) fn older_than(&self, user: &str, stamp: &LoginStamp) -> Older {
        let index = self.lock();
        let Some(session) = index
            .by_user
            .get(user)
            .and_then(|id| index.by_id.get(id))
            .cloned()
        else {
            return Older::None;
        };
        drop(index);
        let newer = session
            .state()
            .login
            .as_ref()
            .is_some_and(|mine| mine > stamp);
        if newer {
            Older::NewerHere
        } else {
            Older::Found(session)
        }
    }

    /// Unlinks `session` from its user (it lost a login race and is being kicked), so pushes
    /// for the user no longer reach it.
    pub(crate) fn forget_user(&self, session: &Session) {
        let mut index = self.lock();
        if let Some(user) = session.user()
            && index.by_user.get(&user) == Some(&session.id)
        {
            index.by_user.remove(&user);
        }
    }

    /// The session of `user`, if connected here.
    pub(crate) fn by_user(&self, user: &str) -> Option<Arc<Session>> {
        let index = self.lock();
        index
            .by_user
            .get(user)
            .and_then(|id| index.by_id.get(id))
            .cloned()
    }

    /// The sessions of `users` held here, looked up under one lock, and the users not held
    /// here.
    pub(crate) fn by_users<'u>(
        &self,
        users: &'u [String],
    ) -> (Vec<(&'u str, Arc<Session>)>, Vec<&'u str>) {
        let index = self.lock();
        let mut found = Vec::with_capacity(users.len());
        let mut missing = Vec::new();
        for user in users {
            match index
                .by_user
                .get(user.as_str())
                .and_then(|id| index.by_id.get(id))
            {
                Some(session) => found.push((user.as_str(), session.clone())),
                None => missing.push(user.as_str()),
            }
        }
        (found, missing)
    }

    /// A snapshot of every session.
    pub(crate) fn all(&self) -> Vec<Arc<Session>> {
        self.lock().by_id.values().cloned().collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Adds a session another gateway handed over; returns how many sessions there are now.
    /// An older session of the same user here (there should be none) is given back to be
    /// ended.
    pub(crate) fn adopt(&self, session: Arc<Session>) -> (usize, Option<Arc<Session>>) {
        let count;
        let displaced;
        {
            let mut index = self.lock();
            let user = session.user();
            index.by_id.insert(session.id, session.clone());
            displaced = user
                .and_then(|user| index.by_user.insert(user, session.id))
                .filter(|id| *id != session.id)
                .and_then(|id| index.by_id.get(&id).cloned());
            count = index.by_id.len();
        }
        self.changed.notify_waiters();
        (count, displaced)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(at_ms: u64, gateway: &str, seq: u64) -> LoginStamp {
        LoginStamp {
            at_ms,
            gateway: NodeId::new(gateway),
            seq,
        }
    }

    #[test]
    fn login_stamps_are_a_total_order_that_never_ties() {
        // Time first; the same millisecond is decided by gateway id, then by the counter.
        assert!(stamp(2, "a", 1) > stamp(1, "z", 9));
        assert!(stamp(5, "g2", 1) > stamp(5, "g1", 7));
        assert!(stamp(5, "g1", 8) > stamp(5, "g1", 7));
        // Two different logins never compare equal (the pair (gateway, seq) is unique).
        let logins = [stamp(5, "g1", 1), stamp(5, "g2", 1), stamp(5, "g1", 2)];
        for (i, a) in logins.iter().enumerate() {
            for (j, b) in logins.iter().enumerate() {
                assert_eq!(a == b, i == j);
            }
        }
    }
}
