//! The gateway's durable store: rule state and the alert outbox, in sled.
//!
//! Everything the rest of the program needs goes through [`Store`]'s few
//! methods. State records and outbox entries live in one tree under two key
//! prefixes, so that a batch of state changes and the alert transitions they
//! caused are applied atomically by one `apply_batch` and made durable by one
//! flush: group commit, never an fsync per event.

use crate::alert::{AlertTransition, Severity};
use crate::engine::{StateChange, StateRecord};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

/// What a commit did to the outbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// Sequence numbers given to the committed transitions.
    pub seqs: Vec<u64>,
    /// Entries dropped to stay within the bounds, by severity (oldest `low` first).
    pub dropped: Vec<(Severity, u64)>,
}

/// Size and severity of every outbox entry, so bounds are enforced without
/// reading the entries back.
#[derive(Debug, Default)]
struct OutboxIndex {
    entries: BTreeMap<u64, (Severity, u32)>,
    bytes: u64,
}

/// Bounds of the outbox (count and bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxBounds {
    pub max_entries: u64,
    pub max_bytes: u64,
}

impl Default for OutboxBounds {
    fn default() -> Self {
        OutboxBounds {
            max_entries: u64::MAX,
            max_bytes: u64::MAX,
        }
    }
}

/// The store. Cheap to clone; all clones share one database. Commits are
/// serialised internally; reads and outbox deletions can run from any task.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    next_seq: Mutex<u64>,
    /// Highest outbox sequence known to be flushed. Readers of the outbox
    /// never see past it: an alert is not published before it is durable
    /// (sled makes applied batches readable before they are flushed).
    durable_seq: std::sync::atomic::AtomicU64,
    outbox: Mutex<OutboxIndex>,
    bounds: Mutex<OutboxBounds>,
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

fn seq_of(k: &[u8]) -> Option<u64> {
    let b: [u8; 8] = k.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// The severity recorded in a stored transition (defaults to `critical` if
/// unreadable, so that an odd entry is the last to be dropped).
fn severity_of(payload: &[u8]) -> Severity {
    #[derive(serde::Deserialize)]
    struct S {
        severity: Severity,
    }
    serde_json::from_slice::<S>(payload)
        .map(|s| s.severity)
        .unwrap_or(Severity::Critical)
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
        let mut index = OutboxIndex::default();
        for item in tree.scan_prefix([OUTBOX]) {
            let (k, v) = item.map_err(sled_err)?;
            if let Some(seq) = seq_of(&k) {
                index.entries.insert(seq, (severity_of(&v), v.len() as u32));
                index.bytes += v.len() as u64;
            }
        }
        let next_seq = index.entries.keys().next_back().map_or(1, |s| s + 1);
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                db,
                tree,
                next_seq: Mutex::new(next_seq),
                durable_seq: std::sync::atomic::AtomicU64::new(next_seq - 1),
                outbox: Mutex::new(index),
                bounds: Mutex::new(OutboxBounds::default()),
                recovered_from,
            }),
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

    /// Sets the outbox bounds enforced at every commit.
    pub fn set_bounds(&self, bounds: OutboxBounds) {
        *lock(&self.inner.bounds) = bounds;
    }

    /// Where a corrupted store was moved to when this one was opened.
    pub fn recovered_from(&self) -> Option<&Path> {
        self.inner.recovered_from.as_deref()
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.inner.path.clone(),
            source,
        }
    }

    /// Every persisted rule-state record.
    pub fn load_state(&self) -> Result<Vec<StateRecord>, StoreError> {
        self.inner
            .tree
            .scan_prefix([STATE])
            .map(|r| {
                r.map(|(k, v)| (k[1..].to_vec(), v.to_vec()))
                    .map_err(|e| self.err(e))
            })
            .collect()
    }

    /// Writes state changes and appends transitions to the outbox in one
    /// atomic batch, enforces the outbox bounds, then makes it durable with
    /// one flush.
    pub fn commit(
        &self,
        changes: &[StateChange],
        transitions: &[AlertTransition],
    ) -> Result<CommitReport, StoreError> {
        let report = self.stage(changes, transitions)?;
        self.flush()?;
        Ok(report)
    }

    /// Like [`Store::commit`] but without the flush: the caller must
    /// [`Store::flush`] before treating the changes as committed. Outbox
    /// readers do not see staged entries until that flush.
    pub fn stage(
        &self,
        changes: &[StateChange],
        transitions: &[AlertTransition],
    ) -> Result<CommitReport, StoreError> {
        let mut next_seq = lock(&self.inner.next_seq);
        let mut batch = sled::Batch::default();
        for c in changes {
            match &c.value {
                Some(v) => batch.insert(state_key(&c.key), v.as_slice()),
                None => batch.remove(state_key(&c.key)),
            }
        }
        let mut added = Vec::with_capacity(transitions.len());
        let mut seqs = Vec::with_capacity(transitions.len());
        for t in transitions {
            let seq = *next_seq;
            *next_seq += 1;
            let json = t.to_json().into_bytes();
            added.push((seq, t.severity, json.len() as u32));
            batch.insert(&outbox_key(seq), json);
            seqs.push(seq);
        }
        // Bounds: drop the oldest entries of the lowest severity first.
        let bounds = *lock(&self.inner.bounds);
        let mut index = lock(&self.inner.outbox);
        for &(seq, sev, len) in &added {
            index.entries.insert(seq, (sev, len));
            index.bytes += len as u64;
        }
        let mut dropped: BTreeMap<Severity, u64> = BTreeMap::new();
        let over = |ix: &OutboxIndex| {
            ix.entries.len() as u64 > bounds.max_entries || ix.bytes > bounds.max_bytes
        };
        if over(&index) {
            for level in [
                Severity::Low,
                Severity::Medium,
                Severity::High,
                Severity::Critical,
            ] {
                let victims: Vec<u64> = index
                    .entries
                    .iter()
                    .filter(|(_, (s, _))| *s == level)
                    .map(|(&seq, _)| seq)
                    .collect();
                for seq in victims {
                    if !over(&index) {
                        break;
                    }
                    if let Some((_, len)) = index.entries.remove(&seq) {
                        index.bytes -= len as u64;
                        batch.remove(&outbox_key(seq));
                        *dropped.entry(level).or_default() += 1;
                    }
                }
                if !over(&index) {
                    break;
                }
            }
        }
        if let Err(e) = self.inner.tree.apply_batch(batch) {
            // Nothing was applied: undo the index.
            for &(seq, _, len) in &added {
                if index.entries.remove(&seq).is_some() {
                    index.bytes -= len as u64;
                }
            }
            return Err(self.err(e));
        }
        if !dropped.is_empty() {
            tracing::warn!(
                ?dropped,
                "outbox full: dropped the oldest transitions of the lowest severity"
            );
        }
        Ok(CommitReport {
            seqs,
            dropped: dropped.into_iter().collect(),
        })
    }

    /// Makes everything applied so far durable (one fsync), and releases
    /// the outbox entries it covers to readers.
    pub fn flush(&self) -> Result<usize, StoreError> {
        let applied = *lock(&self.inner.next_seq) - 1;
        let n = self.inner.db.flush().map_err(|e| self.err(e))?;
        self.inner
            .durable_seq
            .fetch_max(applied, std::sync::atomic::Ordering::AcqRel);
        Ok(n)
    }

    /// Durable outbox entries in delivery order, starting after `after`.
    pub fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let durable = self
            .inner
            .durable_seq
            .load(std::sync::atomic::Ordering::Acquire);
        if after >= durable {
            return Ok(Vec::new());
        }
        let start = outbox_key(after.saturating_add(1));
        let end = outbox_key(durable.saturating_add(1));
        self.inner
            .tree
            .range(start.as_slice()..end.as_slice())
            .take(limit)
            .map(|r| {
                let (k, v) = r.map_err(|e| self.err(e))?;
                Ok(OutboxEntry {
                    seq: seq_of(&k).unwrap_or(0),
                    payload: v.to_vec(),
                })
            })
            .collect()
    }

    /// Removes delivered entries (after the platform's PUBACK). Not flushed:
    /// if lost in a crash the entry is delivered again, which the platform
    /// de-duplicates.
    pub fn remove_outbox(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for &s in seqs {
            batch.remove(&outbox_key(s));
        }
        self.inner
            .tree
            .apply_batch(batch)
            .map_err(|e| self.err(e))?;
        let mut index = lock(&self.inner.outbox);
        for s in seqs {
            if let Some((_, len)) = index.entries.remove(s) {
                index.bytes -= len as u64;
            }
        }
        Ok(())
    }

    /// Entries waiting in the outbox, and their bytes.
    pub fn outbox_size(&self) -> (u64, u64) {
        let index = lock(&self.inner.outbox);
        (index.entries.len() as u64, index.bytes)
    }

    /// Entries waiting in the outbox.
    pub fn outbox_len(&self) -> usize {
        lock(&self.inner.outbox).entries.len()
    }

    /// Fill of the outbox against its bounds, 0.0 to 1.0 (the larger of count and bytes).
    pub fn outbox_fill(&self) -> f64 {
        let bounds = *lock(&self.inner.bounds);
        let (n, b) = self.outbox_size();
        (n as f64 / bounds.max_entries as f64).max(b as f64 / bounds.max_bytes as f64)
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0)
    }
}

/// A poisoned lock only means another thread panicked while holding it; the
/// data (counters and an index) is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{Location, Subject, SubjectKind, TransitionState};

    fn transition(n: u32) -> AlertTransition {
        transition_with(n, Severity::High)
    }

    fn transition_with(n: u32, severity: Severity) -> AlertTransition {
        AlertTransition {
            alert_id: format!("A{n}"),
            revision: 1,
            state: TransitionState::Raised,
            rule: "door_forced".into(),
            severity,
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
            let s = Store::open(&path, 1 << 20, 0).unwrap();
            let change = StateChange {
                key: b"r\0R-1".to_vec(),
                value: Some(vec![1, 2, 3]),
            };
            let report = s
                .commit(&[change], &[transition(1), transition(2)])
                .unwrap();
            assert_eq!(report.seqs, vec![1, 2]);
        }
        let s = Store::open(&path, 1 << 20, 0).unwrap();
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
        assert_eq!(s.commit(&[], &[transition(3)]).unwrap().seqs, vec![3]);
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
            let s = Store::open(&path, 1 << 20, 0).unwrap();
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

    #[test]
    fn full_outbox_drops_oldest_low_first_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let s = Store::open(&path, 1 << 20, 0).unwrap();
        s.set_bounds(OutboxBounds {
            max_entries: 4,
            max_bytes: u64::MAX,
        });
        let ts = [
            transition_with(1, Severity::High),
            transition_with(2, Severity::Low),
            transition_with(3, Severity::Medium),
            transition_with(4, Severity::Low),
        ];
        assert!(s.commit(&[], &ts).unwrap().dropped.is_empty());
        assert_eq!(s.outbox_fill(), 1.0);
        let r = s
            .commit(
                &[],
                &[
                    transition_with(5, Severity::Critical),
                    transition_with(6, Severity::High),
                ],
            )
            .unwrap();
        assert_eq!(r.dropped, vec![(Severity::Low, 2)]);
        let left: Vec<u64> = s
            .outbox_after(0, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(left, vec![1, 3, 5, 6]);
        let r = s.commit(&[], &[transition_with(7, Severity::Low)]).unwrap();
        assert_eq!(
            r.dropped,
            vec![(Severity::Low, 1)],
            "the new low entry is the oldest low one"
        );
        drop(s);
        let s = Store::open(&path, 1 << 20, 0).unwrap();
        assert_eq!(s.outbox_size().0, 4);
        let r = s
            .commit(&[], &[transition_with(8, Severity::High)])
            .unwrap();
        assert_eq!(r.seqs, vec![7], "sequence continues after the newest entry");
        let order: Vec<u64> = s
            .outbox_after(0, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(order, vec![1, 3, 5, 6, 7]);
    }

    #[test]
    fn readers_never_see_entries_before_they_are_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("store"), 1 << 20, 0).unwrap();
        s.stage(&[], &[transition(1)]).unwrap();
        assert!(
            s.outbox_after(0, 10).unwrap().is_empty(),
            "applied but not flushed"
        );
        s.flush().unwrap();
        assert_eq!(s.outbox_after(0, 10).unwrap().len(), 1);
        s.stage(&[], &[transition(2)]).unwrap();
        assert_eq!(s.outbox_after(0, 10).unwrap().len(), 1);
        s.commit(&[], &[transition(3)]).unwrap();
        assert_eq!(s.outbox_after(0, 10).unwrap().len(), 3);
    }
}
