//! Encoder workers: turn the records of streams into finished, fsync'd files, in parallel.
//!
//! Each worker thread owns the open files of the streams assigned to it (a stream always
//! goes to the same worker, so its records are written in order). It receives chunks of
//! records and seal orders over a bounded channel (backpressure on the pipeline thread)
//! and answers with the files it sealed. A file is sealed when the next record would
//! push it over the size cap (and the stream goes on in a new file) or when told to.
//!
//! Open files hold no file descriptor: encoded bytes collect in a small buffer that is
//! appended to the file under `staging/open/` when it fills, so thousands of streams can be
//! written at once without running into the descriptor limit. Sealing finishes the
//! encoding, fsyncs the file and renames it to `staging/sealed/<file name>` (the pipeline
//! thread syncs that directory before it records the files in the manifest).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use chrono::{DateTime, Utc};
use flowlog_formats::key::{FileKind, KeyLayout, KeyParts, KeyPrefix, hash8, object_key};
use flowlog_formats::parquet::{ParquetOptions, ParquetWriter};
use flowlog_formats::text::{GzipTextWriter, line_len_upper_bound};
use flowlog_formats::{FlowRecord, LogFormat};

use super::sealed::{SealReason, SealedFile, StageError, io_err};
use super::window::StreamKey;
use crate::file_modes;
use crate::settings::OutputFormat;

/// Encoded bytes an open file buffers before they are appended to its file on disk.
pub const SPILL_BYTES: usize = 128 * 1024;

/// Bytes of Parquet rows one open file buffers before it writes a row group early.
pub const PARQUET_FILE_BUFFER: u64 = 8 << 20;

/// Chunks of records queued for one worker at most (then the pipeline thread waits).
const QUEUED_JOBS: usize = 4;

/// What the encoders need to know.
#[derive(Debug, Clone)]
pub struct EncodeSettings {
    /// Text or Parquet.
    pub format: OutputFormat,
    /// Record format.
    pub log_format: LogFormat,
    /// Key layout.
    pub layout: KeyLayout,
    /// Key prefix.
    pub prefix: KeyPrefix,
    /// Size cap of every object.
    pub max_file_bytes: u64,
    /// gzip level for text.
    pub gzip_level: u32,
    /// Parquet options.
    pub parquet: ParquetOptions,
    /// Writer id (goes into every hash).
    pub writer_id: String,
    /// Where files are written.
    pub open_dir: PathBuf,
    /// Where sealed files go.
    pub sealed_dir: PathBuf,
}

/// Work for an encoder: records of one stream incarnation (`sid`), then optionally a seal.
#[derive(Debug)]
pub struct Job {
    /// The stream incarnation: its file(s) until it is sealed.
    pub sid: u64,
    /// The stream.
    pub stream: StreamKey,
    /// Records to append, in order.
    pub records: Vec<FlowRecord>,
    /// The WAL position of each record.
    pub positions: Vec<u64>,
    /// Seal the incarnation's file after the records, for this reason.
    pub seal: Option<SealReason>,
}

/// What an encoder reports.
#[derive(Debug)]
pub enum Done {
    /// A file was sealed.
    Sealed(SealedFile),
    /// Incarnation `sid` is sealed: every file of it has been reported.
    Closed(u64),
    /// Encoding or local I/O failed; the records are still in the WAL.
    Failed(StageError),
}

/// The worker threads.
#[derive(Debug)]
pub struct Encoders {
    queues: Vec<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Encoders {
    /// Starts `workers` threads (at least one) that report to `done`.
    pub fn start(
        settings: EncodeSettings,
        workers: usize,
        done: Sender<Done>,
    ) -> Result<Encoders, StageError> {
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        let stop = Arc::new(AtomicBool::new(false));
        for n in 0..workers.max(1) {
            let (tx, rx) = std::sync::mpsc::sync_channel(QUEUED_JOBS);
            let worker = Worker {
                settings: settings.clone(),
                files: HashMap::new(),
                done: done.clone(),
                stop: Arc::clone(&stop),
            };
            let thread = std::thread::Builder::new()
                .name(format!("encoder-{n}"))
                .spawn(move || worker.run(rx))
                .map_err(|source| StageError::Io {
                    path: "encoder thread".into(),
                    source,
                })?;
            queues.push(tx);
            threads.push(thread);
        }
        Ok(Encoders {
            queues,
            threads,
            stop,
        })
    }

    /// Returns the number of workers.
    pub fn workers(&self) -> usize {
        self.queues.len()
    }

    /// Queues `job` for worker `worker` (waits while its queue is full). Fails only when
    /// the worker has stopped, which it reports as [`Done::Failed`] first.
    pub fn send(&self, worker: usize, job: Job) -> Result<(), StageError> {
        self.queues[worker % self.queues.len()]
            .send(job)
            .map_err(|_| StageError::Io {
                path: "encoder thread".into(),
                source: io::Error::other("an encoder thread has stopped"),
            })
    }
}

impl Drop for Encoders {
    fn drop(&mut self) {
        // Work still queued is dropped: its records are in the WAL, and files left open
        // are deleted at the next start.
        self.stop.store(true, Ordering::SeqCst);
        self.queues.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

enum Encoder {
    Text(Box<GzipTextWriter<SpillWriter>>),
    Parquet(Box<ParquetWriter<SpillWriter>>),
}

struct OpenFile {
    stream: StreamKey,
    encoder: Encoder,
    tmp: PathBuf,
    first: u64,
    last: u64,
    records: u64,
    /// The encoder was flushed since the last record (its size is exact).
    flushed: bool,
}

struct Worker {
    settings: EncodeSettings,
    files: HashMap<u64, OpenFile>,
    done: Sender<Done>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn run(mut self, jobs: Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = self.handle(job) {
                let _ = self.done.send(Done::Failed(e));
                // Stop taking work: the pipeline stops on the failure, and everything not
                // sealed is still in the WAL.
                return;
            }
        }
    }

    fn handle(&mut self, job: Job) -> Result<(), StageError> {
        let Job {
            sid,
            stream,
            records,
            positions,
            seal,
        } = job;
        let cap = self.settings.max_file_bytes;
        for (record, position) in records.iter().zip(positions) {
            let bound = line_len_upper_bound(&self.settings.log_format, record) as u64 * 2 + 64;
            let fits = match self.files.get_mut(&sid) {
                Some(file) => file.records == 0 || fits(file, bound, cap)?,
                None => true,
            };
            if !fits {
                self.seal(sid, SealReason::SizeCap)?;
            }
            let file = match self.files.entry(sid) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(create(&self.settings, &stream, position, records.len())?)
                }
            };
            write_record(file, record, position)?;
        }
        if let Some(reason) = seal {
            self.seal(sid, reason)?;
            let _ = self.done.send(Done::Closed(sid));
        }
        Ok(())
    }

    fn seal(&mut self, sid: u64, reason: SealReason) -> Result<(), StageError> {
        let Some(file) = self.files.remove(&sid) else {
            return Ok(());
        };
        let sealed = finish(&self.settings, file, reason)?;
        let _ = self.done.send(Done::Sealed(sealed));
        Ok(())
    }
}

fn parquet_err(
    path: &Path,
) -> impl FnOnce(flowlog_formats::parquet::ParquetError) -> StageError + '_ {
    move |source| StageError::Parquet {
        path: path.display().to_string(),
        source,
    }
}

fn create(
    settings: &EncodeSettings,
    stream: &StreamKey,
    first: u64,
    rows_hint: usize,
) -> Result<OpenFile, StageError> {
    let tmp = settings
        .open_dir
        .join(format!("{}-{first}.part", stream.window_end));
    let out = SpillWriter::new(tmp.clone());
    let format = settings.log_format.clone();
    let encoder = match settings.format {
        OutputFormat::Text => Encoder::Text(Box::new(
            GzipTextWriter::new(out, format, settings.gzip_level).map_err(io_err(&tmp))?,
        )),
        OutputFormat::Parquet => Encoder::Parquet(Box::new(
            ParquetWriter::with_rows_hint(out, format, &settings.parquet, rows_hint)
                .map_err(parquet_err(&tmp))?,
        )),
    };
    Ok(OpenFile {
        stream: stream.clone(),
        encoder,
        tmp,
        first,
        last: first,
        records: 0,
        flushed: false,
    })
}

fn write_record(file: &mut OpenFile, record: &FlowRecord, position: u64) -> Result<(), StageError> {
    match &mut file.encoder {
        Encoder::Text(w) => w.write_record(record).map_err(io_err(&file.tmp))?,
        Encoder::Parquet(w) => {
            w.write_record(record).map_err(parquet_err(&file.tmp))?;
            if w.buffered_bytes_estimate() > PARQUET_FILE_BUFFER {
                w.flush_row_group().map_err(parquet_err(&file.tmp))?;
            }
        }
    }
    file.last = position;
    file.records += 1;
    file.flushed = false;
    Ok(())
}

/// Returns whether one more record of at most `bound` encoded bytes still fits under `cap`;
/// flushes the encoder once to make its size exact before saying no.
fn fits(file: &mut OpenFile, bound: u64, cap: u64) -> Result<bool, StageError> {
    loop {
        let size = match &file.encoder {
            Encoder::Text(w) => w.final_size_bound(),
            Encoder::Parquet(w) => w.bytes_written() + w.buffered_bytes_estimate(),
        };
        if size + bound <= cap {
            return Ok(true);
        }
        if file.flushed {
            return Ok(false);
        }
        match &mut file.encoder {
            Encoder::Text(w) => w.sync_flush().map_err(io_err(&file.tmp))?,
            Encoder::Parquet(w) => w.flush_row_group().map_err(parquet_err(&file.tmp))?,
        }
        file.flushed = true;
    }
}

/// Finishes, fsyncs and renames a file to its sealed name.
fn finish(
    settings: &EncodeSettings,
    file: OpenFile,
    reason: SealReason,
) -> Result<SealedFile, StageError> {
    let tmp = file.tmp;
    let writer = match file.encoder {
        Encoder::Text(w) => w.finish().map_err(io_err(&tmp))?,
        Encoder::Parquet(w) => w.finish().map_err(parquet_err(&tmp))?,
    };
    let bytes = writer.close().map_err(io_err(&tmp))?;
    let stream = file.stream;
    let seed = format!(
        "{}/{}/{}",
        settings.writer_id, stream.window_end, file.first
    );
    let hash = hash8(seed.as_bytes());
    let timestamp = i64::try_from(stream.window_end)
        .ok()
        .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0))
        .unwrap_or_default();
    let kind = match settings.format {
        OutputFormat::Text => FileKind::Text,
        OutputFormat::Parquet => FileKind::Parquet,
    };
    let parts = KeyParts {
        account_id: &stream.account_id,
        region: &stream.region,
        flow_log_id: &stream.flow_log_id,
        file_timestamp: timestamp,
        hash8: &hash,
        kind,
    };
    let key = object_key(settings.layout, &settings.prefix, &parts)?;
    let name = key.rsplit('/').next().unwrap_or(&key).to_owned();
    let path = settings.sealed_dir.join(name);
    // The pipeline thread syncs the directory once for every group of sealed files, before
    // it records them in the manifest.
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(SealedFile {
        key,
        path,
        bytes,
        records: file.records,
        stream,
        first: file.first,
        last: file.last,
        reason,
    })
}

/// A file written in appended chunks without keeping it open.
struct SpillWriter {
    path: PathBuf,
    buf: Vec<u8>,
    written: u64,
}

impl SpillWriter {
    fn new(path: PathBuf) -> SpillWriter {
        SpillWriter {
            path,
            buf: Vec::new(),
            written: 0,
        }
    }

    fn open(&self) -> io::Result<File> {
        let mut options = OpenOptions::new();
        options.create(true).mode(file_modes::STATE_FILE_MODE);
        if self.written == 0 {
            options.write(true).truncate(true);
        } else {
            options.append(true);
        }
        options.open(&self.path)
    }

    fn spill(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut f = self.open()?;
        f.write_all(&self.buf)?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        if self.buf.capacity() > 2 * SPILL_BYTES {
            self.buf.shrink_to(SPILL_BYTES);
        }
        Ok(())
    }

    /// Writes what is buffered, fsyncs the file and returns its size.
    fn close(mut self) -> io::Result<u64> {
        let mut f = self.open()?;
        f.write_all(&self.buf)?;
        self.written += self.buf.len() as u64;
        f.sync_all()?;
        Ok(self.written)
    }
}

impl Write for SpillWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > SPILL_BYTES {
            self.spill()?;
            if data.len() >= SPILL_BYTES {
                let mut f = self.open()?;
                f.write_all(data)?;
                self.written += data.len() as u64;
                return Ok(data.len());
            }
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
