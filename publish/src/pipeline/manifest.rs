//! The manifest: an append-only, fsync'd log of what happened to staged files.
//!
//! One JSON object per line: the writer id, every sealed file (its final key, the stream
//! and the WAL positions it covers), every confirmed upload, import progress, and the
//! dedupe state of agents that push batches (stored before the WAL entries holding their
//! delivery marks are reclaimed). At
//! startup it tells which sealed files still need uploading, and up to which position each
//! stream's records are already in sealed files (so a WAL replay skips them). A torn last
//! line (crash mid-append) is dropped; damage anywhere else is an error.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::batch::ImportMark;
use super::dedupe::AgentState;
use super::window::StreamKey;
use crate::file_modes;

const FILE_NAME: &str = "manifest.jsonl";

/// A stream key as stored in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredStream {
    /// Account.
    pub account_id: String,
    /// Region.
    pub region: String,
    /// Flow log id.
    pub flow_log_id: String,
    /// Window end (Unix seconds).
    pub window_end: u64,
}

impl From<&StreamKey> for StoredStream {
    fn from(s: &StreamKey) -> Self {
        StoredStream {
            account_id: s.account_id.to_string(),
            region: s.region.to_string(),
            flow_log_id: s.flow_log_id.to_string(),
            window_end: s.window_end,
        }
    }
}

impl From<&StoredStream> for StreamKey {
    fn from(s: &StoredStream) -> Self {
        StreamKey {
            account_id: s.account_id.as_str().into(),
            region: s.region.as_str().into(),
            flow_log_id: s.flow_log_id.as_str().into(),
            window_end: s.window_end,
        }
    }
}

/// A sealed file as recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedEntry {
    /// Manifest-local id of the file.
    pub id: u64,
    /// Final object key.
    pub key: String,
    /// Staged file, relative to the state directory.
    pub file: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Records in the file.
    pub records: u64,
    /// Stream of the file.
    pub stream: StoredStream,
    /// Position of its first record.
    pub first: u64,
    /// Position of its last record.
    pub last: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Entry {
    Writer {
        id: String,
    },
    Sealed(SealedEntry),
    Uploaded {
        id: u64,
    },
    Import(ImportMark),
    Agent(AgentState),
    Stream {
        stream: StoredStream,
        sealed_through: u64,
    },
}

/// Failure reading or writing the manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// File I/O failed.
    #[error("manifest {path}: i/o failed")]
    Io {
        /// The manifest file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A line in the middle of the manifest is damaged.
    #[error(
        "manifest {path}: line {line} is damaged ({reason}); move the state directory aside to start afresh"
    )]
    Damaged {
        /// The manifest file.
        path: String,
        /// 1-based line.
        line: usize,
        /// Parser message.
        reason: String,
    },
}

/// The manifest of one state directory.
#[derive(Debug)]
pub struct Manifest {
    path: PathBuf,
    file: File,
    writer_id: String,
    pending: BTreeMap<u64, SealedEntry>,
    sealed_through: HashMap<StreamKey, u64>,
    imports: HashMap<String, ImportMark>,
    agents: HashMap<String, AgentState>,
    next_id: u64,
    lines: usize,
}

impl Manifest {
    /// Opens (or creates) the manifest in `dir`. `configured_writer_id` overrides the stored
    /// one; without either, a new id is derived once and stored.
    pub fn open(dir: &Path, configured_writer_id: Option<&str>) -> Result<Manifest, ManifestError> {
        let path = dir.join(FILE_NAME);
        let io = |source| ManifestError::Io {
            path: path.display().to_string(),
            source,
        };
        file_modes::prepare_state_dir(dir).map_err(io)?;
        let mut stored_writer = None;
        let mut pending = BTreeMap::new();
        let mut sealed_through: HashMap<StreamKey, u64> = HashMap::new();
        let mut imports = HashMap::new();
        let mut agents = HashMap::new();
        let mut next_id = 1;
        let mut lines = 0;
        let mut valid_len = 0u64;
        if path.exists() {
            let reader = BufReader::new(File::open(&path).map_err(io)?);
            let all: Vec<String> = reader.lines().collect::<Result<_, _>>().map_err(io)?;
            let count = all.len();
            for (i, line) in all.into_iter().enumerate() {
                let entry = match serde_json::from_str::<Entry>(&line) {
                    Ok(e) => e,
                    Err(e) if i + 1 == count => {
                        tracing::warn!(path = %path.display(), line = i + 1, error = %e, "dropping torn last manifest line");
                        break;
                    }
                    Err(e) => {
                        return Err(ManifestError::Damaged {
                            path: path.display().to_string(),
                            line: i + 1,
                            reason: e.to_string(),
                        });
                    }
                };
                valid_len += line.len() as u64 + 1;
                lines += 1;
                match entry {
                    Entry::Writer { id } => stored_writer = Some(id),
                    Entry::Sealed(s) => {
                        next_id = next_id.max(s.id + 1);
                        let through = sealed_through
                            .entry(StreamKey::from(&s.stream))
                            .or_insert(0);
                        *through = (*through).max(s.last);
                        pending.insert(s.id, s);
                    }
                    Entry::Uploaded { id } => {
                        pending.remove(&id);
                    }
                    Entry::Import(mark) => {
                        imports.insert(mark.input.clone(), mark);
                    }
                    Entry::Agent(state) => {
                        agents.insert(state.agent_id.clone(), state);
                    }
                    Entry::Stream {
                        stream,
                        sealed_through: through,
                    } => {
                        let t = sealed_through.entry(StreamKey::from(&stream)).or_insert(0);
                        *t = (*t).max(through);
                    }
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(file_modes::STATE_FILE_MODE)
            .open(&path)
            .map_err(io)?;
        if file.metadata().map_err(io)?.len() != valid_len {
            file.set_len(valid_len).map_err(io)?;
        }
        let mut manifest = Manifest {
            path: path.clone(),
            file,
            writer_id: String::new(),
            pending,
            sealed_through,
            imports,
            agents,
            next_id,
            lines,
        };
        let writer_id = match (configured_writer_id, stored_writer) {
            (Some(c), Some(s)) if c == s => s,
            (Some(c), _) => {
                manifest.append(&Entry::Writer { id: c.to_owned() })?;
                c.to_owned()
            }
            (None, Some(s)) => s,
            (None, None) => {
                let id = derive_writer_id();
                manifest.append(&Entry::Writer { id: id.clone() })?;
                id
            }
        };
        manifest.writer_id = writer_id;
        Ok(manifest)
    }

    fn append(&mut self, entry: &Entry) -> Result<(), ManifestError> {
        self.append_all(std::slice::from_ref(entry))
    }

    /// Appends entries with one write and one fsync.
    fn append_all(&mut self, entries: &[Entry]) -> Result<(), ManifestError> {
        let io = |source| ManifestError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let mut out = Vec::new();
        for entry in entries {
            serde_json::to_writer(&mut out, entry).map_err(|e| io(std::io::Error::other(e)))?;
            out.push(b'\n');
        }
        self.file.write_all(&out).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.lines += entries.len();
        Ok(())
    }

    /// Returns the writer id that goes into every file's hash.
    pub fn writer_id(&self) -> &str {
        &self.writer_id
    }

    /// Records sealed files (durably, with one fsync) and returns them with their ids.
    pub fn record_sealed_all(
        &mut self,
        mut entries: Vec<SealedEntry>,
    ) -> Result<Vec<SealedEntry>, ManifestError> {
        for entry in &mut entries {
            entry.id = self.next_id;
            self.next_id += 1;
        }
        let lines: Vec<Entry> = entries.iter().cloned().map(Entry::Sealed).collect();
        self.append_all(&lines)?;
        for entry in &entries {
            let through = self
                .sealed_through
                .entry(StreamKey::from(&entry.stream))
                .or_insert(0);
            *through = (*through).max(entry.last);
            self.pending.insert(entry.id, entry.clone());
        }
        Ok(entries)
    }

    /// Records that the sink confirmed the files `ids` (durably, with one fsync); returns
    /// the entries it knew.
    pub fn record_uploaded_all(&mut self, ids: &[u64]) -> Result<Vec<SealedEntry>, ManifestError> {
        let lines: Vec<Entry> = ids.iter().map(|&id| Entry::Uploaded { id }).collect();
        self.append_all(&lines)?;
        Ok(ids
            .iter()
            .filter_map(|id| self.pending.remove(id))
            .collect())
    }

    /// Records a sealed file (durably) and returns its id.
    pub fn record_sealed(&mut self, entry: SealedEntry) -> Result<u64, ManifestError> {
        let id = self.next_id;
        self.record_sealed_all(vec![entry])?;
        Ok(id)
    }

    /// Records that the sink confirmed file `id`.
    pub fn record_uploaded(&mut self, id: u64) -> Result<Option<SealedEntry>, ManifestError> {
        Ok(self.record_uploaded_all(&[id])?.pop())
    }

    /// Records import progress (durably).
    pub fn record_import(&mut self, mark: &ImportMark) -> Result<(), ManifestError> {
        self.append(&Entry::Import(mark.clone()))?;
        self.imports.insert(mark.input.clone(), mark.clone());
        Ok(())
    }

    /// Records the dedupe state of agents (durably, one fsync for all).
    pub fn record_agents(&mut self, states: Vec<AgentState>) -> Result<(), ManifestError> {
        if states.is_empty() {
            return Ok(());
        }
        let entries: Vec<Entry> = states.into_iter().map(Entry::Agent).collect();
        self.append_all(&entries)?;
        for entry in entries {
            if let Entry::Agent(state) = entry {
                self.agents.insert(state.agent_id.clone(), state);
            }
        }
        Ok(())
    }

    /// Returns the stored dedupe state of every agent.
    pub fn agents(&self) -> impl Iterator<Item = &AgentState> {
        self.agents.values()
    }

    /// Returns sealed files not confirmed by the sink yet.
    pub fn pending(&self) -> impl Iterator<Item = &SealedEntry> {
        self.pending.values()
    }

    /// Returns the last position of `stream` that is already in a sealed file.
    pub fn sealed_through(&self, stream: &StreamKey) -> Option<u64> {
        self.sealed_through.get(stream).copied()
    }

    /// Returns the stored progress of an import.
    pub fn import_progress(&self, input: &str) -> Option<&ImportMark> {
        self.imports.get(input)
    }

    /// Returns every stored import progress.
    pub fn imports(&self) -> impl Iterator<Item = &ImportMark> {
        self.imports.values()
    }

    /// Rewrites the manifest with only what is still needed when the WAL no longer holds
    /// positions below `wal_first_position`; runs when the log has grown large.
    pub fn compact_if_large(&mut self, wal_first_position: u64) -> Result<(), ManifestError> {
        if self.lines < 10_000
            || self.lines
                < 4 * (self.pending.len()
                    + self.sealed_through.len()
                    + self.imports.len()
                    + self.agents.len())
        {
            return Ok(());
        }
        let io = |source| ManifestError::Io {
            path: self.path.display().to_string(),
            source,
        };
        self.sealed_through
            .retain(|_, through| *through >= wal_first_position);
        let mut entries = vec![Entry::Writer {
            id: self.writer_id.clone(),
        }];
        entries.extend(self.imports.values().cloned().map(Entry::Import));
        entries.extend(self.agents.values().cloned().map(Entry::Agent));
        entries.extend(self.sealed_through.iter().map(|(s, t)| Entry::Stream {
            stream: StoredStream::from(s),
            sealed_through: *t,
        }));
        entries.extend(self.pending.values().cloned().map(Entry::Sealed));
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut out = Vec::new();
        for e in &entries {
            serde_json::to_writer(&mut out, e).map_err(|e| io(std::io::Error::other(e)))?;
            out.push(b'\n');
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(file_modes::STATE_FILE_MODE)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&out).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            flowlog_runtime::sync_dir(dir).map_err(io)?;
        }
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        self.lines = entries.len();
        Ok(())
    }
}

/// Derives a writer id from the host name, the process and the time: unique per state
/// directory, and stored so it never changes for that directory.
fn derive_writer_id() -> String {
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let digest =
        Sha256::digest(format!("{}/{}/{nanos}", host.trim(), std::process::id()).as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(last: u64) -> SealedEntry {
        SealedEntry {
            id: 0,
            key: format!("k{last}"),
            file: format!("sealed/f{last}"),
            bytes: 10,
            records: 2,
            stream: StoredStream {
                account_id: "123456789012".into(),
                region: "us-east-1".into(),
                flow_log_id: "fl-1".into(),
                window_end: 300,
            },
            first: last - 1,
            last,
        }
    }

    #[test]
    fn survives_reopen_and_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let (id1, writer) = {
            let mut m = Manifest::open(dir.path(), None).unwrap();
            let id1 = m.record_sealed(entry(5)).unwrap();
            m.record_sealed(entry(9)).unwrap();
            m.record_uploaded(id1).unwrap();
            m.record_import(&ImportMark {
                input: "in".into(),
                consumed: 3,
                done: false,
            })
            .unwrap();
            (id1, m.writer_id().to_owned())
        };
        let path = dir.path().join(FILE_NAME);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"op\":\"uploa").unwrap();
        let mut m = Manifest::open(dir.path(), None).unwrap();
        assert_eq!(m.writer_id(), writer);
        assert_eq!(m.pending().map(|e| e.last).collect::<Vec<_>>(), vec![9]);
        assert_eq!(
            m.sealed_through(&StreamKey::from(&entry(1).stream)),
            Some(9)
        );
        assert_eq!(m.import_progress("in").map(|p| p.consumed), Some(3));
        let id3 = m.record_sealed(entry(12)).unwrap();
        assert!(id3 > id1 + 1);
        drop(m);
        let m = Manifest::open(dir.path(), Some("configured")).unwrap();
        assert_eq!(m.writer_id(), "configured");
        assert_eq!(m.pending().count(), 2);
    }

    fn agent(id: &str, spool_id: u64, lsn: u64) -> AgentState {
        AgentState {
            agent_id: id.into(),
            spool_id,
            acked_below: 3,
            seqs: [3, 5].into_iter().collect(),
            lsn,
        }
    }

    #[test]
    fn agent_states_survive_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::open(dir.path(), None).unwrap();
        m.record_agents(vec![agent("a", 1, 4), agent("b", 2, 5)])
            .unwrap();
        m.record_agents(vec![agent("a", 9, 7)]).unwrap();
        m.record_agents(Vec::new()).unwrap();
        drop(m);
        let mut m = Manifest::open(dir.path(), None).unwrap();
        let mut got: Vec<AgentState> = m.agents().cloned().collect();
        got.sort_by(|x, y| x.agent_id.cmp(&y.agent_id));
        assert_eq!(got, vec![agent("a", 9, 7), agent("b", 2, 5)]);
        for i in 0..10_001u64 {
            m.record_agents(vec![agent("c", 3, i)]).unwrap();
        }
        m.compact_if_large(0).unwrap();
        assert!(m.lines < 10, "{}", m.lines);
        let again = Manifest::open(dir.path(), None).unwrap();
        assert_eq!(again.agents().count(), 3);
        assert!(again.agents().any(|a| *a == agent("c", 3, 10_000)));
    }

    #[test]
    fn damage_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        Manifest::open(dir.path(), None)
            .unwrap()
            .record_sealed(entry(5))
            .unwrap();
        let path = dir.path().join(FILE_NAME);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, format!("garbage\n{text}")).unwrap();
        let e = Manifest::open(dir.path(), None).unwrap_err();
        assert!(e.to_string().contains("line 1 is damaged"), "{e}");
    }

    #[test]
    fn compaction_keeps_what_is_needed() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::open(dir.path(), None).unwrap();
        for i in 0..6000u64 {
            let id = m.record_sealed(entry(i * 10 + 2)).unwrap();
            if i < 5999 {
                m.record_uploaded(id).unwrap();
            }
        }
        m.compact_if_large(0).unwrap();
        assert!(m.lines < 10);
        let again = Manifest::open(dir.path(), None).unwrap();
        assert_eq!(again.pending().count(), 1);
        assert_eq!(
            again.sealed_through(&StreamKey::from(&entry(1).stream)),
            Some(59_992)
        );
        assert_eq!(again.writer_id(), m.writer_id());
    }
}
