//! The session table of this gateway, with an index by user id.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::session::Session;

#[derive(Default)]
struct Index {
    by_id: HashMap<u64, Arc<Session>>,
    by_user: HashMap<Arc<str>, u64>,
}

/// Every session on this gateway.
#[derive(Default)]
pub(crate) struct Sessions {
    index: Mutex<Index>,
    next_id: AtomicU64,
}

impl Sessions {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Adds a session; returns how many there are now.
    pub(crate) fn insert(&self, session: Arc<Session>) -> usize {
        let mut index = self.lock();
        index.by_id.insert(session.id, session);
        index.by_id.len()
    }

    /// Removes a session (and its user index entry if it still points here); returns how many
    /// sessions remain.
    pub(crate) fn remove(&self, session: &Session) -> usize {
        let mut index = self.lock();
        index.by_id.remove(&session.id);
        if let Some(user) = session.user()
            && index.by_user.get(&user) == Some(&session.id)
        {
            index.by_user.remove(&user);
        }
        index.by_id.len()
    }

    /// Attaches `user` to `session`; returns the session the user had here before, if any.
    pub(crate) fn login(
        &self,
        session: &Arc<Session>,
        user: Arc<str>,
        now_ms: u64,
    ) -> Option<Arc<Session>> {
        let mut index = self.lock();
        let previous_user = {
            let mut state = session.state();
            let previous = state.user.replace(user.clone());
            state.logged_in_at_ms = now_ms;
            previous
        };
        if let Some(previous) = previous_user
            && previous != user
            && index.by_user.get(&previous) == Some(&session.id)
        {
            index.by_user.remove(&previous);
        }
        let displaced = index.by_user.insert(user, session.id)?;
        if displaced == session.id {
            return None;
        }
        index.by_id.get(&displaced).cloned()
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

    /// A snapshot of every session.
    pub(crate) fn all(&self) -> Vec<Arc<Session>> {
        self.lock().by_id.values().cloned().collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
