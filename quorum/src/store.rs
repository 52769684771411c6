//! The Raft log and state machine. The state machine is the membership itself (the regular
//! nodes and what each brought: kind, addresses, capacity); entries carry nothing else.
//!
//! The log, the vote and the committed id are written to a file (`--data-dir`) on every change
//! before the change is acknowledged: the configuration changes rarely (elections and
//! membership changes only; nothing is appended per heartbeat), so the whole log is rewritten
//! each time, to a temporary file, synced and renamed. The state machine is rebuilt from the
//! log at start (it is never purged: snapshots are off). Without a data directory everything
//! is in memory: a regular node that restarts comes back empty and the leader sends it the log
//! again (openraft's `loosen-follower-log-revert`), at the usual cost of Raft without a disk,
//! a restarted node forgetting its vote of the current term.

use std::{
    collections::BTreeMap,
    fmt::Debug,
    io::Cursor,
    ops::RangeBounds,
    path::{Path, PathBuf},
    sync::Arc,
};

use openraft::{
    Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StoredMembership, Vote,
    storage::{LogFlushed, RaftLogStorage, RaftStateMachine},
};
use tokio::sync::Mutex;

use crate::types::{NodeNum, TypeConfig};

type Result<T> = std::result::Result<T, StorageError<NodeNum>>;

/// The log: entries by index, the vote, the last purged id.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct LogData {
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    vote: Option<Vote<NodeNum>>,
    committed: Option<LogId<NodeNum>>,
    purged: Option<LogId<NodeNum>>,
}

/// The log store; clones share one log (openraft reads through a clone).
#[derive(Clone, Default)]
pub(crate) struct LogStore {
    data: Arc<Mutex<LogData>>,
    /// Where the log is kept, if on disk.
    file: Option<Arc<PathBuf>>,
}

impl LogStore {
    /// A log kept in `file` (read back if it exists), or in memory.
    pub(crate) async fn open(file: Option<PathBuf>) -> std::io::Result<Self> {
        let Some(file) = file else {
            return Ok(Self::default());
        };
        if let Some(dir) = file.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let data = match tokio::fs::read(&file).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::other(format!("{}: not a Raft log: {e}", file.display()))
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => LogData::default(),
            Err(error) => return Err(error),
        };
        Ok(Self {
            data: Arc::new(Mutex::new(data)),
            file: Some(Arc::new(file)),
        })
    }

    /// Writes the log to its file (when it has one) before the change it holds is reported
    /// done: a temporary file, synced, renamed over the old one.
    async fn persist(&self, data: &LogData) -> Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let write_error = |e: std::io::Error| {
            StorageError::from_io_error(openraft::ErrorSubject::Logs, openraft::ErrorVerb::Write, e)
        };
        let bytes = serde_json::to_vec(data).map_err(|e| write_error(std::io::Error::other(e)))?;
        write_synced(file, &bytes).await.map_err(write_error)
    }
}

async fn write_synced(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let tmp = file.with_extension("tmp");
    let mut out = tokio::fs::File::create(&tmp).await?;
    out.write_all(bytes).await?;
    out.sync_all().await?;
    drop(out);
    tokio::fs::rename(&tmp, file).await
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let data = self.data.lock().await;
        Ok(data.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let data = self.data.lock().await;
        let last = data.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: data.purged,
            last_log_id: last.or(data.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeNum>) -> Result<()> {
        let mut data = self.data.lock().await;
        data.vote = Some(*vote);
        self.persist(&data).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeNum>>> {
        Ok(self.data.lock().await.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeNum>>) -> Result<()> {
        let mut data = self.data.lock().await;
        data.committed = committed;
        self.persist(&data).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeNum>>> {
        Ok(self.data.lock().await.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut data = self.data.lock().await;
        for entry in entries {
            data.entries.insert(entry.log_id.index, entry);
        }
        // Flushed once written (at once in memory).
        let written = self.persist(&data).await;
        callback.log_io_completed(
            written
                .as_ref()
                .map_err(|e| std::io::Error::other(e.to_string()))
                .copied(),
        );
        written
    }

    async fn truncate(&mut self, log_id: LogId<NodeNum>) -> Result<()> {
        let mut data = self.data.lock().await;
        data.entries.split_off(&log_id.index);
        self.persist(&data).await
    }

    async fn purge(&mut self, log_id: LogId<NodeNum>) -> Result<()> {
        let mut data = self.data.lock().await;
        data.purged = Some(log_id);
        data.entries = data.entries.split_off(&(log_id.index + 1));
        self.persist(&data).await
    }
}

/// What has been applied: the last entry and the membership it left.
#[derive(Default)]
struct Applied {
    last: Option<LogId<NodeNum>>,
    membership: StoredMembership<NodeNum, crate::Member>,
    snapshot: Option<(SnapshotMeta<NodeNum, crate::Member>, Vec<u8>)>,
    snapshots_built: u64,
}

/// The state machine: the membership as of the last applied entry.
#[derive(Clone, Default)]
pub(crate) struct StateMachine {
    applied: Arc<Mutex<Applied>>,
}

/// A snapshot's bytes: the applied log id and the membership, as JSON.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotBody {
    last: Option<LogId<NodeNum>>,
    membership: StoredMembership<NodeNum, crate::Member>,
}

fn snapshot_error(e: &impl std::error::Error) -> StorageError<NodeNum> {
    StorageError::from_io_error(
        openraft::ErrorSubject::Snapshot(None),
        openraft::ErrorVerb::Read,
        std::io::Error::other(e.to_string()),
    )
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let mut applied = self.applied.lock().await;
        let body = SnapshotBody {
            last: applied.last,
            membership: applied.membership.clone(),
        };
        let bytes = serde_json::to_vec(&body).map_err(|e| snapshot_error(&e))?;
        applied.snapshots_built += 1;
        let meta = SnapshotMeta {
            last_log_id: applied.last,
            last_membership: applied.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                applied.last.map_or(0, |l| l.index),
                applied.snapshots_built
            ),
        };
        applied.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(
        Option<LogId<NodeNum>>,
        StoredMembership<NodeNum, crate::Member>,
    )> {
        let applied = self.applied.lock().await;
        Ok((applied.last, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<crate::types::Applied>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.applied.lock().await;
        let mut answers = Vec::new();
        for entry in entries {
            applied.last = Some(entry.log_id);
            if let EntryPayload::Membership(membership) = entry.payload {
                applied.membership = StoredMembership::new(Some(entry.log_id), membership);
            }
            answers.push(crate::types::Applied);
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeNum, crate::Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let bytes = snapshot.into_inner();
        let body: SnapshotBody = serde_json::from_slice(&bytes).map_err(|e| snapshot_error(&e))?;
        let mut applied = self.applied.lock().await;
        applied.last = body.last;
        applied.membership = body.membership;
        applied.snapshot = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let applied = self.applied.lock().await;
        Ok(applied.snapshot.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[tokio::test]
    async fn a_log_on_disk_comes_back_with_its_vote_entries_and_commit() {
        let dir = std::env::temp_dir().join(format!("quorum-store-{}", std::process::id()));
        let file = dir.join("raft-n1.json");
        let _ = std::fs::remove_file(&file);
        let mut store = LogStore::open(Some(file.clone())).await.expect("opens");
        let vote = Vote::new(3, 7);
        store.save_vote(&vote).await.expect("vote saved");
        {
            // What `append` does, without a real flush callback: insert, then persist.
            let mut data = store.data.lock().await;
            for e in [entry(1, 0), entry(3, 1), entry(3, 2)] {
                data.entries.insert(e.log_id.index, e);
            }
            store.persist(&data).await.expect("written");
        }
        store.truncate(entry(3, 2).log_id).await.expect("truncated");
        let committed = Some(entry(3, 1).log_id);
        store.save_committed(committed).await.expect("commit saved");
        drop(store);

        let mut again = LogStore::open(Some(file.clone())).await.expect("reopens");
        assert_eq!(again.read_vote().await.expect("vote"), Some(vote));
        assert_eq!(again.read_committed().await.expect("commit"), committed);
        let entries = again.try_get_log_entries(0..10).await.expect("entries");
        let ids: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(ids, [0, 1], "the truncated entry stays truncated");
        // In memory, nothing is written anywhere.
        let memory = LogStore::open(None).await.expect("in memory");
        assert!(memory.file.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
