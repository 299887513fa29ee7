//! The gateway's durable store: rule state and the alert outbox, in sled.
//!
//! Everything the rest of the program needs goes through [`Store`]'s few
//! methods. State records and outbox entries live in one tree under two key
//! prefixes, so that a batch of state changes and the alert transitions they
//! caused are applied atomically by one `apply_batch` and made durable by one
//! flush: group commit, never an fsync per event.

use crate::alert::AlertTransition;
use crate::engine::{StateChange, StateRecord};
use std::path::{Path, PathBuf};

const STATE: u8 = b's';
const OUTBOX: u8 = b'o';

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Sled {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("store {path}: cannot move the corrupted store aside: {source}")]
    MoveAside {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One alert transition waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// Position in the outbox; delivery order.
    pub seq: u64,
    /// The transition's JSON, exactly as published.
    pub payload: Vec<u8>,
}

pub struct Store {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    next_seq: u64,
    recovered_from: Option<PathBuf>,
}

fn state_key(k: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(k.len() + 1);
    v.push(STATE);
    v.extend_from_slice(k);
    v
}

fn outbox_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = OUTBOX;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

impl Store {
    /// Opens (or creates) the store at `path` with a page cache of
    /// `cache_bytes`. A store that sled reports as corrupted is moved aside
    /// (to `<path>.corrupt-<unix seconds>`) and a fresh one is created; see
    /// [`Store::recovered_from`].
    pub fn open(path: &Path, cache_bytes: u64, now_unix: i64) -> Result<Store, StoreError> {
        let sled_err = |source| StoreError::Sled {
            path: path.to_path_buf(),
            source,
        };
        let mut recovered_from = None;
        let db = match Self::open_db(path, cache_bytes) {
            Ok(db) => db,
            Err(sled::Error::Corruption { .. }) | Err(sled::Error::Unsupported(_)) => {
                let aside = PathBuf::from(format!("{}.corrupt-{now_unix}", path.display()));
                std::fs::rename(path, &aside).map_err(|source| StoreError::MoveAside {
                    path: path.to_path_buf(),
                    source,
                })?;
                tracing::error!(store = %path.display(), moved_to = %aside.display(),
                    "store was corrupted; moved aside and started empty");
                recovered_from = Some(aside);
                Self::open_db(path, cache_bytes).map_err(sled_err)?
            }
            Err(e) => return Err(sled_err(e)),
        };
        let tree = (*db).clone();
        let next_seq = match tree.scan_prefix([OUTBOX]).next_back() {
            Some(Ok((k, _))) if k.len() == 9 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&k[1..]);
                u64::from_be_bytes(b) + 1
            }
            Some(Err(e)) => return Err(sled_err(e)),
            _ => 1,
        };
        Ok(Store {
            path: path.to_path_buf(),
            db,
            tree,
            next_seq,
            recovered_from,
        })
    }

    fn open_db(path: &Path, cache_bytes: u64) -> sled::Result<sled::Db> {
        sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::LowSpace)
            // We flush at our own commit points; no background timer flushes.
            .flush_every_ms(None)
            .open()
    }

    /// Where a corrupted store was moved to when this one was opened.
    pub fn recovered_from(&self) -> Option<&Path> {
        self.recovered_from.as_deref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    /// Every persisted rule-state record.
    pub fn load_state(&self) -> Result<Vec<StateRecord>, StoreError> {
        self.tree
            .scan_prefix([STATE])
            .map(|r| {
                r.map(|(k, v)| (k[1..].to_vec(), v.to_vec()))
                    .map_err(|e| self.err(e))
            })
            .collect()
    }

    /// Writes state changes and appends transitions to the outbox in one
    /// atomic batch, then makes it durable. Returns the outbox sequence
    /// numbers given to the transitions.
    pub fn commit(
        &mut self,
        changes: &[StateChange],
        transitions: &[AlertTransition],
    ) -> Result<Vec<u64>, StoreError> {
        let seqs = self.stage(changes, transitions)?;
        self.flush()?;
        Ok(seqs)
    }

    /// Like [`Store::commit`] but without the flush: several stages can share one.
    pub fn stage(
        &mut self,
        changes: &[StateChange],
        transitions: &[AlertTransition],
    ) -> Result<Vec<u64>, StoreError> {
        let mut batch = sled::Batch::default();
        for c in changes {
            match &c.value {
                Some(v) => batch.insert(state_key(&c.key), v.as_slice()),
                None => batch.remove(state_key(&c.key)),
            }
        }
        let mut seqs = Vec::with_capacity(transitions.len());
        for t in transitions {
            let seq = self.next_seq;
            self.next_seq += 1;
            batch.insert(&outbox_key(seq), t.to_json().into_bytes());
            seqs.push(seq);
        }
        self.tree.apply_batch(batch).map_err(|e| self.err(e))?;
        Ok(seqs)
    }

    /// Makes everything applied so far durable (one fsync).
    pub fn flush(&self) -> Result<usize, StoreError> {
        self.db.flush().map_err(|e| self.err(e))
    }

    /// Outbox entries in delivery order, starting after `after`.
    pub fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let start = outbox_key(after.saturating_add(1));
        let end = [OUTBOX + 1];
        self.tree
            .range(start.as_slice()..end.as_slice())
            .take(limit)
            .map(|r| {
                let (k, v) = r.map_err(|e| self.err(e))?;
                let mut b = [0u8; 8];
                b.copy_from_slice(&k[1..9]);
                Ok(OutboxEntry {
                    seq: u64::from_be_bytes(b),
                    payload: v.to_vec(),
                })
            })
            .collect()
    }

    /// Removes delivered entries (after the platform's PUBACK).
    pub fn remove_outbox(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for &s in seqs {
            batch.remove(&outbox_key(s));
        }
        self.tree.apply_batch(batch).map_err(|e| self.err(e))
    }

    /// Entries waiting in the outbox.
    pub fn outbox_len(&self) -> usize {
        self.tree.scan_prefix([OUTBOX]).count()
    }

    /// Bytes sled has written to its files so far (for the flash budget).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{Location, Severity, Subject, SubjectKind, TransitionState};

    fn transition(n: u32) -> AlertTransition {
        AlertTransition {
            alert_id: format!("A{n}"),
            revision: 1,
            state: TransitionState::Raised,
            rule: "door_forced".into(),
            severity: Severity::High,
            compound: "c".into(),
            subject: Subject {
                kind: SubjectKind::Device,
                id: "d".into(),
            },
            location: Location::default(),
            at: "2026-11-02T08:00:00+08:00".into(),
            since: "2026-11-02T08:00:00+08:00".into(),
            evidence: serde_json::json!({}),
            message: String::new(),
        }
    }

    #[test]
    fn commit_survives_reopen_and_outbox_keeps_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let mut s = Store::open(&path, 1 << 20, 0).unwrap();
            let change = StateChange {
                key: b"r\0R-1".to_vec(),
                value: Some(vec![1, 2, 3]),
            };
            let seqs = s
                .commit(&[change], &[transition(1), transition(2)])
                .unwrap();
            assert_eq!(seqs, vec![1, 2]);
        }
        let mut s = Store::open(&path, 1 << 20, 0).unwrap();
        assert_eq!(
            s.load_state().unwrap(),
            vec![(b"r\0R-1".to_vec(), vec![1, 2, 3])]
        );
        let pending = s.outbox_after(0, 10).unwrap();
        assert_eq!(
            pending.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        let first: AlertTransition = serde_json::from_slice(&pending[0].payload).unwrap();
        assert_eq!(first.alert_id, "A1");
        s.remove_outbox(&[1]).unwrap();
        assert_eq!(s.commit(&[], &[transition(3)]).unwrap(), vec![3]);
        assert_eq!(s.outbox_after(0, 10).unwrap().len(), 2);
        let delete = StateChange {
            key: b"r\0R-1".to_vec(),
            value: None,
        };
        s.commit(&[delete], &[]).unwrap();
        assert!(s.load_state().unwrap().is_empty());
    }

    #[test]
    fn corrupted_store_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let mut s = Store::open(&path, 1 << 20, 0).unwrap();
            s.commit(&[], &[transition(1)]).unwrap();
        }
        // Scribble over sled's files.
        for entry in std::fs::read_dir(&path).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() {
                std::fs::write(&p, vec![0xA5u8; 4096]).unwrap();
            }
        }
        let s = Store::open(&path, 1 << 20, 42).unwrap();
        let aside = s.recovered_from().expect("recovered");
        assert!(aside.to_string_lossy().ends_with(".corrupt-42"));
        assert!(aside.exists());
        assert_eq!(s.outbox_len(), 0);
    }
}
