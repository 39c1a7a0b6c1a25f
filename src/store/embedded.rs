//! The embedded store: one redb file under `state_dir` with two tables — `circuits`
//! (circuit key → circuit JSON) and `accounts` (phone-number id → learned or operator
//! mapping JSON, removals kept as records without a WABA) — written by one task that
//! coalesces bursts into one durable transaction.

use std::collections::{BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError, TableDefinition,
};
use tokio::sync::{mpsc, watch};

use super::StoreError;
use crate::circuit::{Circuit, Mapping, MappingNotice, Notice, Table};
use crate::common::backoff::backoff_delay;
use crate::common::BoxError;
use crate::metrics::METRICS;

/// The store's file name inside `state_dir`.
pub const FILE_NAME: &str = "circuits.redb";

const CIRCUITS: TableDefinition<&str, &str> = TableDefinition::new("circuits");
const ACCOUNTS: TableDefinition<&str, &str> = TableDefinition::new("accounts");

/// What a store file holds.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every circuit record.
    pub circuits: Vec<Circuit>,
    /// Every phone → WABA record other than the configuration's.
    pub mappings: Vec<Mapping>,
}

/// Page cache redb may use; the whole state is a few kilobytes per WABA.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Why a store file could not be opened.
enum Failure {
    /// The file is damaged or not a redb store: the operator may move it aside.
    Corrupt(BoxError),
    /// Another process holds it.
    InUse,
    /// The file system refused (permissions, read-only, full…).
    Io(BoxError),
}

/// A reason that has only a text (a panic inside redb, a record that does not decode).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Reason(pub String);

fn reason(s: impl Into<String>) -> BoxError {
    Box::new(Reason(s.into()))
}

/// Opens (creating when missing) the store under `state_dir` and reads every circuit.
/// Blocking: run on a blocking thread.
pub fn open(state_dir: &Path, move_aside: bool) -> Result<(Database, Loaded), StoreError> {
    std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Dir {
        path: state_dir.display().to_string(),
        source,
    })?;
    let path = state_dir.join(FILE_NAME);
    let shown = path.display().to_string();
    match open_and_load(&path) {
        Ok(ok) => Ok(ok),
        Err(Failure::Corrupt(why)) if move_aside => {
            let aside = aside_path(&path);
            std::fs::rename(&path, &aside).map_err(|e| StoreError::Open {
                path: shown.clone(),
                source: reason(format!(
                    "corrupt ({why}) and could not be moved aside to {}: {e}",
                    aside.display()
                )),
            })?;
            tracing::error!(
                path = %shown,
                moved_to = %aside.display(),
                error = %crate::common::error_chain(why.as_ref()),
                "STATE STORE WAS CORRUPT AND HAS BEEN MOVED ASIDE (--move-aside-corrupt-state): \
                 starting with EMPTY circuit state; circuits that were open are forgotten until \
                 a send, webhook or operator opens them again (or another replica shares them)"
            );
            open_and_load(&path).map_err(|f| failure_to_error(f, &shown))
        }
        Err(f) => Err(failure_to_error(f, &shown)),
    }
}

/// For `check-config`: how many phone numbers the store under `state_dir` has learned (or
/// been given by operators), read without creating anything. `Ok(None)` when there is no
/// store yet.
pub fn count_learned(state_dir: &Path) -> Result<Option<usize>, StoreError> {
    let path = state_dir.join(FILE_NAME);
    if !path.exists() {
        return Ok(None);
    }
    let shown = path.display().to_string();
    let (_db, loaded) = open_and_load(&path).map_err(|f| failure_to_error(f, &shown))?;
    Ok(Some(
        loaded
            .mappings
            .iter()
            .filter(|m| m.waba_id.is_some())
            .count(),
    ))
}

fn failure_to_error(f: Failure, path: &str) -> StoreError {
    match f {
        Failure::Corrupt(cause) => StoreError::Corrupt {
            path: path.to_string(),
            cause,
        },
        Failure::InUse => StoreError::InUse {
            path: path.to_string(),
        },
        Failure::Io(source) => StoreError::Open {
            path: path.to_string(),
            source,
        },
    }
}

/// `<name>.corrupt-<UTC timestamp>` next to the file (a suffix when that exists already).
fn aside_path(path: &Path) -> PathBuf {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| FILE_NAME.to_string());
    let mut candidate = path.with_file_name(format!("{name}.corrupt-{stamp}"));
    let mut n = 1;
    while candidate.exists() {
        candidate = path.with_file_name(format!("{name}.corrupt-{stamp}-{n}"));
        n += 1;
    }
    candidate
}

fn open_and_load(path: &Path) -> Result<(Database, Loaded), Failure> {
    // redb takes an empty file for a new store; ours never is one (it is created, with its
    // header, by the first open): an empty file is what a failed copy or a disk that filled
    // at the wrong moment leaves, and starting empty from it would forget every block.
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_file() && meta.len() == 0 {
            return Err(Failure::Corrupt(reason(
                "the file is empty (0 bytes); a state store never is",
            )));
        }
    }
    // A damaged file may make redb panic instead of returning an error: both are "corrupt".
    let opened = std::panic::catch_unwind(AssertUnwindSafe(|| {
        Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(true)
            .create(path)
    }));
    let db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(e)) => return Err(classify(e)),
        Err(panic) => return Err(Failure::Corrupt(reason(panic_text(panic)))),
    };
    let loaded = std::panic::catch_unwind(AssertUnwindSafe(|| load(&db)));
    match loaded {
        Ok(Ok(circuits)) => Ok((db, circuits)),
        Ok(Err(msg)) => Err(Failure::Corrupt(reason(msg))),
        Err(panic) => Err(Failure::Corrupt(reason(panic_text(panic)))),
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("reading the file failed: {msg}")
}

fn classify(e: DatabaseError) -> Failure {
    use std::io::ErrorKind as K;
    match e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => Failure::InUse,
        DatabaseError::Storage(StorageError::Io(io))
            if matches!(
                io.kind(),
                K::PermissionDenied
                    | K::ReadOnlyFilesystem
                    | K::StorageFull
                    | K::QuotaExceeded
                    | K::NotFound
                    | K::IsADirectory
                    | K::NotADirectory
                    | K::WouldBlock
            ) =>
        {
            Failure::Io(Box::new(io))
        }
        other => Failure::Corrupt(Box::new(other)),
    }
}

fn load(db: &Database) -> Result<Loaded, String> {
    let rtx = db.begin_read().map_err(|e| e.to_string())?;
    let circuits = load_circuits(&rtx)?;
    let mappings = load_mappings(&rtx)?;
    Ok(Loaded { circuits, mappings })
}

fn load_mappings(rtx: &redb::ReadTransaction) -> Result<Vec<Mapping>, String> {
    let table = match rtx.open_table(ACCOUNTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let mut out = Vec::new();
    for row in table.iter().map_err(|e| e.to_string())? {
        let (k, v) = row.map_err(|e| e.to_string())?;
        let m: Mapping = serde_json::from_str(v.value())
            .map_err(|e| format!("account record {:?} is not a mapping: {e}", k.value()))?;
        if m.phone_number_id != k.value() {
            return Err(format!(
                "account record {:?} holds the mapping of phone number {:?}",
                k.value(),
                m.phone_number_id
            ));
        }
        out.push(m);
    }
    Ok(out)
}

fn load_circuits(rtx: &redb::ReadTransaction) -> Result<Vec<Circuit>, String> {
    let table = match rtx.open_table(CIRCUITS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let mut out = Vec::new();
    for row in table.iter().map_err(|e| e.to_string())? {
        let (k, v) = row.map_err(|e| e.to_string())?;
        let (key, json) = (k.value(), v.value());
        let c: Circuit = serde_json::from_str(json)
            .map_err(|e| format!("record {key:?} is not a circuit: {e}"))?;
        if c.key() != key {
            return Err(format!(
                "record {key:?} holds the circuit of WABA {:?}",
                c.waba_id
            ));
        }
        out.push(c);
    }
    Ok(out)
}

/// Which table a record goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Tab {
    Circuits,
    Accounts,
}

/// Writes one batch in one durable (fsync'd) transaction: `Some(json)` stores a record,
/// `None` deletes it.
fn write(db: &Database, batch: &[((Tab, String), Option<String>)]) -> Result<(), redb::Error> {
    let wtx = db.begin_write()?;
    {
        let mut circuits = wtx.open_table(CIRCUITS)?;
        let mut accounts = wtx.open_table(ACCOUNTS)?;
        for ((tab, k), v) in batch {
            let t = match tab {
                Tab::Circuits => &mut circuits,
                Tab::Accounts => &mut accounts,
            };
            match v {
                Some(v) => {
                    t.insert(k.as_str(), v.as_str())?;
                }
                None => {
                    t.remove(k.as_str())?;
                }
            }
        }
    }
    wtx.commit()?;
    Ok(())
}

/// Tracks which change sequence numbers are durable: every one up to `watermark`.
struct Durable {
    watermark: u64,
    done: BTreeSet<u64>,
}

impl Durable {
    fn add(&mut self, seqs: impl IntoIterator<Item = u64>) -> u64 {
        for s in seqs {
            if s > self.watermark {
                self.done.insert(s);
            }
        }
        while self.done.remove(&(self.watermark + 1)) {
            self.watermark += 1;
        }
        self.watermark
    }
}

/// A change the writer receives.
// Moved once into `take` and consumed there, never stored: boxing would only add an
// allocation per change.
#[allow(clippy::large_enum_variant)]
enum Change {
    Circuit(Notice),
    Mapping(MappingNotice),
}

/// Adds a change to the batch: the latest per record wins (`None`: the record was dropped).
fn take(change: Change, pending: &mut Pending, seqs: &mut Vec<u64>) {
    let (key, seq, json) = match change {
        Change::Circuit(n) => {
            let json = (!n.removed).then(|| serde_json::to_string(&n.circuit));
            ((Tab::Circuits, n.circuit.key()), n.seq, json)
        }
        Change::Mapping(n) => {
            let json = (!n.removed).then(|| serde_json::to_string(&n.mapping));
            ((Tab::Accounts, n.mapping.phone_number_id), n.seq, json)
        }
    };
    seqs.push(seq);
    let json = match json.transpose() {
        Ok(j) => j,
        Err(e) => {
            // Cannot happen for these types; the change stays in memory only.
            tracing::error!(key = %key.1, error = %e, "cannot encode a state record");
            return;
        }
    };
    match pending.get(&key) {
        Some((s, _)) if *s > seq => {}
        _ => {
            pending.insert(key, (seq, json));
        }
    }
}

/// Records changed since the last good commit: the latest seen and its JSON.
type Pending = HashMap<(Tab, String), (u64, Option<String>)>;

/// How the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Every change it received is committed.
    Durable,
    /// It gave up at shutdown with this many circuits not committed.
    NotDurable(usize),
}

/// The writer task: receives every change, keeps the latest circuit per WABA of whatever is
/// queued, commits it in one transaction, then reports durability to the table. `base` is
/// the table's last sequence number when `rx` was subscribed.
///
/// A store that fails heals: after an I/O error redb refuses every later commit on the
/// same handle ("Previous I/O error occurred"), so the writer drops the handle, reopens the
/// file with backoff and commits again everything not yet durable — the latest circuit of
/// each WABA changed since the last good commit, which is what the file lacks. Meanwhile
/// `wa_breaker_store_durable` is 0, failed commits are counted, and one line is logged when
/// the outage starts and one when it ends.
pub async fn writer(
    db: Database,
    path: String,
    table: Arc<Table>,
    mut rx: mpsc::UnboundedReceiver<Notice>,
    mut mappings: mpsc::UnboundedReceiver<MappingNotice>,
    base: u64,
    mut shutdown: watch::Receiver<bool>,
) -> Ended {
    let file = PathBuf::from(&path);
    let mut db: Option<Arc<Database>> = Some(Arc::new(db));
    let mut durable = Durable {
        watermark: base,
        done: BTreeSet::new(),
    };
    let mut pending: Pending = HashMap::new();
    let mut seqs: Vec<u64> = Vec::new();
    let mut failures: u32 = 0;
    let mut outage: Option<Instant> = None;
    let mut stopping = false;

    loop {
        if seqs.is_empty() {
            if stopping {
                break;
            }
            tokio::select! {
                n = rx.recv() => match n {
                    Some(n) => take(Change::Circuit(n), &mut pending, &mut seqs),
                    None => stopping = true,
                },
                Some(n) = mappings.recv() => take(Change::Mapping(n), &mut pending, &mut seqs),
                _ = shutdown.changed() => stopping = true,
            }
        }
        // Coalesce: everything queued right now goes into this transaction.
        while let Ok(n) = rx.try_recv() {
            take(Change::Circuit(n), &mut pending, &mut seqs);
        }
        while let Ok(n) = mappings.try_recv() {
            take(Change::Mapping(n), &mut pending, &mut seqs);
        }
        if seqs.is_empty() {
            continue;
        }
        let batch: Vec<((Tab, String), Option<String>)> = pending
            .iter()
            .map(|(k, (_, json))| (k.clone(), json.clone()))
            .collect();
        let started = Instant::now();
        let handle = db.clone();
        let reopen = file.clone();
        let result = tokio::task::spawn_blocking(move || {
            // After a failure the old handle is gone: reopen the file first.
            let db = match handle {
                Some(db) => db,
                None => Arc::new(reopen_file(&reopen)?),
            };
            write(&db, &batch).map(|()| db)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        match result {
            Ok(handle) => {
                db = Some(handle);
                if let Some(since) = outage.take() {
                    tracing::warn!(
                        path = %path,
                        failed_commits = failures,
                        outage_ms = since.elapsed().as_millis() as u64,
                        circuits = pending.len(),
                        "state store writable again: every change made meanwhile is committed"
                    );
                }
                failures = 0;
                METRICS.store_durable.set(1);
                tracing::debug!(
                    circuits = pending.len(),
                    changes = seqs.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "state committed"
                );
                pending.clear();
                let w = durable.add(seqs.drain(..));
                table.mark_durable(w);
            }
            Err(e) => {
                // redb refuses every later commit on a handle that saw an I/O error.
                db = None;
                failures += 1;
                METRICS.store_commit_failures.inc();
                METRICS.store_durable.set(0);
                if outage.is_none() {
                    outage = Some(Instant::now());
                    tracing::error!(
                        path = %path,
                        error = %e,
                        "cannot commit to the state store: changes apply in memory and are retried (reopening the file); until then a kill -9 would forget them, admin changes answer 202 and tripping answers wait up to 1 s"
                    );
                } else {
                    tracing::debug!(path = %path, error = %e, failures, "state store still failing");
                }
                if stopping && failures >= 3 {
                    tracing::error!(
                        path = %path,
                        circuits = pending.len(),
                        "giving up on the state store at shutdown: these changes are not durable"
                    );
                    return Ended::NotDurable(pending.len());
                }
                let delay = backoff_delay(failures, Duration::from_secs(5));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed(), if !stopping => stopping = true,
                }
            }
        }
    }
    // Dropping the last handle closes the file cleanly.
    drop(db);
    Ended::Durable
}

/// Reopens the store after a failed commit (no integrity check: the file was ours a moment
/// ago; redb repairs an interrupted commit on open).
fn reopen_file(path: &Path) -> Result<Database, redb::Error> {
    Ok(Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_watermark_waits_for_gaps() {
        let mut d = Durable {
            watermark: 10,
            done: BTreeSet::new(),
        };
        assert_eq!(d.add([12, 13]), 10);
        assert_eq!(d.add([9, 11]), 13);
        assert_eq!(d.add([14]), 14);
        assert!(d.done.is_empty());
    }

    #[test]
    fn corrupt_file_is_an_error_and_can_be_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        std::fs::write(&file, vec![0xA5u8; 64 * 1024]).unwrap();
        let Err(err) = open(dir.path(), false) else {
            panic!("corrupt store must fail")
        };
        let text = err.to_string();
        assert!(text.contains(&file.display().to_string()), "{text}");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{text}");
        let (_db, loaded) = open(dir.path(), true).expect("moved aside");
        assert!(loaded.circuits.is_empty());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("circuits.redb.corrupt-")),
            "{names:?}"
        );
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (db, loaded) = open(dir.path(), false).unwrap();
        assert!(loaded.circuits.is_empty());
        let c = Circuit::new("102290129340398", chrono::Utc::now());
        let m = Mapping {
            phone_number_id: "106540352242922".into(),
            waba_id: Some("102290129340398".into()),
            source: crate::circuit::MappingSource::Webhook,
            updated_at: chrono::Utc::now(),
            origin: "a".into(),
        };
        write(
            &db,
            &[
                (
                    (Tab::Circuits, c.key()),
                    Some(serde_json::to_string(&c).unwrap()),
                ),
                (
                    (Tab::Accounts, m.phone_number_id.clone()),
                    Some(serde_json::to_string(&m).unwrap()),
                ),
            ],
        )
        .unwrap();
        drop(db);
        let (_db, loaded) = open(dir.path(), false).unwrap();
        assert_eq!(loaded.circuits, vec![c]);
        assert_eq!(loaded.mappings, vec![m]);
    }

    #[test]
    fn second_process_handle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, _) = open(dir.path(), false).unwrap();
        let Err(err) = open(dir.path(), true) else {
            panic!("in use")
        };
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    }
}
