//! Fleet load generator: N simulated agents push batches to one or more
//! `flowlog-aggregator serve` processes over gRPC with TLS, like real agents catching up
//! after an outage (each agent sends its next batch as soon as the last one is acked).
//!
//! ```text
//! fleet_load pki --dir DIR                     # test CA + server certificate
//! fleet_load tokens --agents N                 # the aggregator's tokens file, on stdout
//! fleet_load run --endpoint URL [--endpoint URL2] --ca DIR/ca.pem --agents N ...
//! fleet_load verify --dir OUTPUT --expect RUN.json
//! fleet_load files --dir OUTPUT --expect RUN.json --arrivals ARRIVALS.tsv
//! ```
//!
//! `run` prints one JSON line: records and batches acked, records/s over the measured
//! window, ack latency percentiles, and the peak RSS of the `--watch-pid` processes.
//! With `--unique`, every record carries `(agent, seq, index)` in its `bytes` field and
//! `verify` checks that the published files hold each pushed record exactly once, each in
//! the file of its window (and, with `--stream-per-agent`, of its agent's account).
//!
//! `--stream-per-agent` makes every agent one output stream of its own; `--catch-up SECS`
//! spreads the records' `end` times over the last SECS seconds, oldest first, as agents
//! delivering a spool filled during an outage. `files` counts the output files per stream
//! and window against the rule: one file per stream and window, plus the size-cap splits,
//! plus at most one late file per grace period after the window closed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use clap::{Args, Parser, Subcommand};
use flowlog_formats::input::RecordSource;
use flowlog_formats::key::parse_key;
use flowlog_formats::{FlowRecord, Text};
use flowlog_transport::pb;
use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

#[derive(Debug, Parser)]
#[command(
    name = "fleet_load",
    about = "Simulated agent fleet against flowlog-aggregator serve"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a test CA, server certificate and key (localhost, 127.0.0.1) into DIR.
    Pki {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print the tokens file of N agents (`load-00001 <token> account=* region=*` lines).
    Tokens {
        #[arg(long)]
        agents: usize,
    },
    /// Push batches as N agents.
    Run(RunArgs),
    /// Check that the files below DIR hold every record of a `--unique` run exactly once,
    /// each in the file of its window (and of its agent's account with
    /// `--stream-per-agent`).
    Verify {
        #[arg(long)]
        dir: PathBuf,
        /// The JSON line `run` printed.
        #[arg(long)]
        expect: PathBuf,
        /// Width of the aggregator's windows, seconds.
        #[arg(long, default_value_t = 300)]
        window_secs: u64,
    },
    /// Count the files below DIR per stream and window against the rule (one file per
    /// stream and window, plus size-cap splits, plus one late file per grace period).
    Files(FilesArgs),
}

#[derive(Debug, Args)]
struct FilesArgs {
    /// The aggregators' output directory.
    #[arg(long)]
    dir: PathBuf,
    /// The JSON line `run` printed.
    #[arg(long)]
    expect: PathBuf,
    /// The file `run --arrivals` wrote.
    #[arg(long)]
    arrivals: PathBuf,
    /// The aggregators' `output.grace`, seconds.
    #[arg(long, default_value_t = 60)]
    grace: u64,
    /// The aggregators' `output.max_file_bytes`.
    #[arg(long, default_value_t = 75_000_000)]
    max_file_bytes: u64,
    /// Also write the totals as one JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Aggregator URL; agents are spread over all of them (agent i → endpoint i mod n).
    #[arg(long = "endpoint", required = true)]
    endpoints: Vec<String>,
    /// CA file the aggregators' certificates are signed by (omit with http:// endpoints).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Simulated agents.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 2000)]
    batch_records: usize,
    /// Seconds of load before the measured window starts.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Stop after this many batches per agent (instead of after warmup + duration).
    #[arg(long)]
    batches_per_agent: Option<u64>,
    /// `zstd`, `gzip` or `none`.
    #[arg(long, default_value = "zstd")]
    compression: String,
    /// Unique records (for `verify`); otherwise a pool of pre-encoded batches is reused.
    #[arg(long)]
    unique: bool,
    /// Every agent is an output stream of its own: its records carry its own account id
    /// (`9` and the agent number in 11 digits). A push carries no flow-log id (the
    /// aggregator files every push under its `[flow_log] id`), so the account is the part
    /// of the stream key (account, region, flow-log id) an agent sets.
    #[arg(long)]
    stream_per_agent: bool,
    /// Catch-up after an outage: the records' `end` times are spread over the SECS seconds
    /// before the run starts, oldest first per agent: batch k of `--batches-per-agent` B
    /// holds the k-th B-th of that span. Without it, records end when their batch is built.
    #[arg(long, value_name = "SECS", requires = "batches_per_agent")]
    catch_up: Option<u64>,
    /// Width of the aggregator's windows, seconds (for `--arrivals`).
    #[arg(long, default_value_t = 300)]
    window_secs: u64,
    /// Write, per agent and window, the records pushed and when the first was sent and
    /// the last acked (tab-separated, Unix seconds), for `files`.
    #[arg(long)]
    arrivals: Option<PathBuf>,
    /// Processes whose peak RSS is reported (the aggregators).
    #[arg(long = "watch-pid")]
    watch_pids: Vec<u32>,
}

/// Token of simulated agent `i` (the same in `tokens` and `run`).
fn token(i: usize) -> String {
    let mut s = 0x666c_6f77_6c6f_6700_u64 ^ i as u64;
    let mut next = || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    format!("{:016x}{:016x}", next(), next())
}

fn agent_id(i: usize) -> String {
    format!("load-{:05}", i + 1)
}

/// Account id of simulated agent `i` with `--stream-per-agent` (12 digits, none of the
/// generator's own accounts).
fn agent_account(i: usize) -> String {
    format!("9{:011}", i + 1)
}

/// Sends pre-encoded `PushRequest` bytes as they are.
#[derive(Debug, Clone, Default)]
struct RawCodec;

#[derive(Debug, Clone, Default)]
struct RawEncoder;

#[derive(Debug, Clone, Default)]
struct ReplyDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for ReplyDecoder {
    type Item = pb::PushReply;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<pb::PushReply>, Status> {
        pb::PushReply::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = pb::PushReply;
    type Encoder = RawEncoder;
    type Decoder = ReplyDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ReplyDecoder {
        ReplyDecoder
    }
}

/// A `PushRequest` whose `batch` is already encoded.
fn push_bytes(agent: &str, spool_id: u64, seq: u64, batch: &[u8]) -> Bytes {
    let head = pb::PushRequest {
        agent_id: agent.to_owned(),
        spool_id,
        seq,
        acked_below: seq,
        batch: None,
    };
    let mut out = BytesMut::with_capacity(head.encoded_len() + batch.len() + 8);
    // Encoding into a BytesMut cannot run out of room.
    let _ = head.encode(&mut out);
    // Field 5 (batch), wire type 2 (length-delimited).
    prost::encoding::encode_key(5, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(batch.len() as u64, &mut out);
    out.put_slice(batch);
    out.freeze()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// End of the window of width `width` that holds `ts` (the file timestamp of its records).
fn window_end(ts: u64, width: u64) -> u64 {
    (ts / width + 1) * width
}

/// `YYYYMMDDTHHmmZ`, as in file names.
fn window_name(secs: u64) -> String {
    // Days to civil date (H. Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let rem = secs % 86_400;
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Realistic records with `start`/`end` in the current minute.
fn template_records(n: usize, seed: u64) -> Vec<FlowRecord> {
    let now = unix_now();
    let mut records = flowlog_benches::default_format_records(n, seed);
    for r in &mut records {
        let len = r
            .end
            .unwrap_or(0)
            .saturating_sub(r.start.unwrap_or(0))
            .min(59);
        r.end = Some(now);
        r.start = Some(now - len);
    }
    records
}

/// `bytes` value of record `index` of batch `seq` of agent `agent` in a `--unique` run.
fn unique_bytes(agent: usize, seq: u64, index: usize) -> u64 {
    ((agent as u64) << 40) | (seq << 20) | index as u64
}

/// When the records of a batch end: now, or a slice of a catch-up span.
#[derive(Debug, Clone, Copy)]
enum Times {
    /// `end` = the time the batch is built.
    Live,
    /// Batch k of `batches` ends in the k-th slice of `[from, from + span)`.
    CatchUp { from: u64, span: u64, batches: u64 },
}

impl Times {
    /// `[lo, hi)` of the `end` times of batch `seq` (1-based).
    fn slice(self, seq: u64) -> (u64, u64) {
        match self {
            Times::Live => {
                let now = unix_now();
                (now, now + 1)
            }
            Times::CatchUp {
                from,
                span,
                batches,
            } => {
                let at = |k: u64| from + k.min(batches) * span / batches.max(1);
                (at(seq - 1), at(seq).max(at(seq - 1) + 1))
            }
        }
    }
}

/// Records pushed into one window by one agent, and when.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    records: u64,
    /// Unix time the first of them was sent.
    first_sent: f64,
    /// Unix time the last of them was acked.
    last_acked: f64,
}

#[derive(Debug, Default)]
struct Totals {
    records: AtomicU64,
    batches: AtomicU64,
    duplicates: AtomicU64,
    errors: AtomicU64,
    measured_records: AtomicU64,
}

async fn connect(url: &str, ca: Option<&Certificate>) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    if let Some(ca) = ca {
        endpoint = endpoint.tls_config(ClientTlsConfig::new().ca_certificate(ca.clone()))?;
    }
    // A connection per agent, made up front, as a fleet holds them.
    let mut last = None;
    for _ in 0..20 {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(last.map_or_else(|| anyhow::anyhow!("cannot connect"), Into::into))
        .with_context(|| format!("connecting to {url}"))
}

struct AgentRun {
    index: usize,
    channel: Channel,
    /// Pre-encoded batches (sent as they are), or
    pool: Arc<Vec<Bytes>>,
    /// record templates each batch is built from (unique, per-agent or catch-up runs).
    templates: Arc<Vec<Vec<FlowRecord>>>,
    batch_records: usize,
    compression: Option<CompressionEncoding>,
    unique: bool,
    account: Option<Text>,
    times: Times,
    window_secs: u64,
    batches: Option<u64>,
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
    totals: Arc<Totals>,
}

/// What an agent reports when it stops.
#[derive(Debug, Default)]
struct AgentReport {
    agent: usize,
    latencies: Vec<u32>,
    /// By window end.
    arrivals: BTreeMap<u64, Arrival>,
}

/// Builds batch `seq` of agent `a` from a template: times, account and unique markers.
/// Returns the encoded batch and the records per window end.
fn build_batch(a: &AgentRun, seq: u64) -> (Vec<u8>, Vec<(u64, u64)>) {
    let mut records = a.templates[(a.index + seq as usize) % a.templates.len()].clone();
    let (lo, hi) = a.times.slice(seq);
    let n = records.len().max(1) as u64;
    let mut windows: Vec<(u64, u64)> = Vec::new();
    for (i, r) in records.iter_mut().enumerate() {
        let len = r.end.unwrap_or(0).saturating_sub(r.start.unwrap_or(0));
        let end = lo + (hi - lo) * i as u64 / n;
        r.end = Some(end);
        r.start = Some(end - len);
        if a.unique {
            r.bytes = Some(unique_bytes(a.index, seq, i));
        }
        if let Some(account) = &a.account {
            r.account_id = Some(Text::clone(account));
        }
        let w = window_end(end, a.window_secs);
        match windows.last_mut() {
            Some((last, count)) if *last == w => *count += 1,
            _ => windows.push((w, 1)),
        }
    }
    (
        flowlog_transport::encode_batch(&records).encode_to_vec(),
        windows,
    )
}

async fn run_agent(a: AgentRun) -> AgentReport {
    let mut report = AgentReport {
        agent: a.index,
        ..AgentReport::default()
    };
    let id = agent_id(a.index);
    let auth: tonic::metadata::MetadataValue<_> = match format!("Bearer {}", token(a.index)).parse()
    {
        Ok(v) => v,
        Err(_) => return report,
    };
    let spool_id = 0x5eed_0000_0000_0000 | a.index as u64;
    let mut grpc = tonic::client::Grpc::new(a.channel.clone())
        .max_encoding_message_size(flowlog_transport::MAX_MESSAGE_BYTES);
    if let Some(c) = a.compression {
        grpc = grpc.send_compressed(c).accept_compressed(c);
    }
    let path = http::uri::PathAndQuery::from_static("/flowlog.ingest.v1.Ingest/Push");
    let mut seq = 1u64;
    while !a.stop.load(Ordering::Relaxed) && a.batches.is_none_or(|b| seq <= b) {
        let (body, windows) = if a.pool.is_empty() {
            let (batch, windows) = build_batch(&a, seq);
            (push_bytes(&id, spool_id, seq, &batch), windows)
        } else {
            let batch = &a.pool[(a.index + seq as usize) % a.pool.len()];
            (push_bytes(&id, spool_id, seq, batch), Vec::new())
        };
        let first_sent = unix_now_f64();
        // Retry the same seq until it is acked (the aggregator dedupes).
        loop {
            let mut request = tonic::Request::new(body.clone());
            request
                .metadata_mut()
                .insert(flowlog_transport::AUTHORIZATION, auth.clone());
            let started = Instant::now();
            if grpc.ready().await.is_err() {
                a.totals.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            match grpc.unary(request, path.clone(), RawCodec).await {
                Ok(reply) => {
                    let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
                    let n = a.batch_records as u64;
                    a.totals.batches.fetch_add(1, Ordering::Relaxed);
                    // A duplicate ack means an earlier try of this seq was written (its
                    // reply was lost): its records are in the output all the same.
                    if reply.get_ref().duplicate {
                        a.totals.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    a.totals.records.fetch_add(n, Ordering::Relaxed);
                    if a.measuring.load(Ordering::Relaxed) {
                        a.totals.measured_records.fetch_add(n, Ordering::Relaxed);
                        report.latencies.push(micros);
                    }
                    break;
                }
                Err(status) => {
                    a.totals.errors.fetch_add(1, Ordering::Relaxed);
                    if a.totals.errors.load(Ordering::Relaxed) < 10 {
                        eprintln!("{id} seq {seq}: {status}");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let last_acked = unix_now_f64();
        for (w, records) in windows {
            let e = report.arrivals.entry(w).or_insert(Arrival {
                records: 0,
                first_sent,
                last_acked,
            });
            e.records += records;
            e.first_sent = e.first_sent.min(first_sent);
            e.last_acked = e.last_acked.max(last_acked);
        }
        seq += 1;
    }
    report
}

fn rss_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let compression = match args.compression.as_str() {
        "zstd" => Some(CompressionEncoding::Zstd),
        "gzip" => Some(CompressionEncoding::Gzip),
        "none" => None,
        other => bail!("--compression {other}: use zstd, gzip or none"),
    };
    let ca = match &args.ca {
        Some(p) => Some(Certificate::from_pem(
            std::fs::read(p).with_context(|| p.display().to_string())?,
        )),
        None => None,
    };
    if args.batch_records == 0 || args.batch_records >= 1 << 20 {
        bail!("--batch-records must be 1 to 1048575");
    }
    if args.window_secs == 0 {
        bail!("--window-secs must be at least 1");
    }
    // Batches are built per push when their records differ per agent or per batch;
    // otherwise a pool of pre-encoded batches is sent as it is.
    let build = args.unique || args.stream_per_agent || args.catch_up.is_some();
    let pool: Arc<Vec<Bytes>> = Arc::new(if build {
        Vec::new()
    } else {
        (0..64u64)
            .map(|s| {
                Bytes::from(
                    flowlog_transport::encode_batch(&template_records(args.batch_records, s))
                        .encode_to_vec(),
                )
            })
            .collect()
    });
    let templates: Arc<Vec<Vec<FlowRecord>>> = Arc::new(if build {
        (0..16u64)
            .map(|s| template_records(args.batch_records, s))
            .collect()
    } else {
        Vec::new()
    });
    let connecting = Instant::now();
    let mut channels = Vec::with_capacity(args.agents);
    for i in 0..args.agents {
        let url = &args.endpoints[i % args.endpoints.len()];
        channels.push(connect(url, ca.as_ref()).await?);
    }
    eprintln!(
        "{} agents connected in {:.1} s",
        args.agents,
        connecting.elapsed().as_secs_f64()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(args.batches_per_agent.is_some()));
    let totals = Arc::new(Totals::default());
    let started_unix = unix_now_f64();
    let times = match (args.catch_up, args.batches_per_agent) {
        (Some(span), Some(batches)) => Times::CatchUp {
            from: unix_now().saturating_sub(span),
            span,
            batches: batches.max(1),
        },
        _ => Times::Live,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (index, channel) in channels.into_iter().enumerate() {
        tasks.spawn(run_agent(AgentRun {
            index,
            channel,
            pool: Arc::clone(&pool),
            templates: Arc::clone(&templates),
            batch_records: args.batch_records,
            compression,
            unique: args.unique,
            account: args
                .stream_per_agent
                .then(|| Text::from(agent_account(index).as_str())),
            times,
            window_secs: args.window_secs,
            batches: args.batches_per_agent,
            stop: Arc::clone(&stop),
            measuring: Arc::clone(&measuring),
            totals: Arc::clone(&totals),
        }));
    }
    let started = Instant::now();
    let mut peak_rss = vec![0u64; args.watch_pids.len()];
    let sample = |peak: &mut Vec<u64>| {
        for (p, pid) in peak.iter_mut().zip(&args.watch_pids) {
            *p = (*p).max(rss_kib(*pid, "VmRSS:"));
        }
    };
    let mut reports = Vec::with_capacity(args.agents);
    let measured_from;
    if args.batches_per_agent.is_some() {
        measured_from = started;
        while !tasks.is_empty() {
            tokio::select! {
                done = tasks.join_next() => {
                    if let Some(Ok(report)) = done {
                        reports.push(report);
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(500)) => sample(&mut peak_rss),
            }
        }
    } else {
        tokio::time::sleep(Duration::from_secs(args.warmup)).await;
        measuring.store(true, Ordering::Relaxed);
        measured_from = Instant::now();
        while measured_from.elapsed() < Duration::from_secs(args.duration) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            sample(&mut peak_rss);
        }
        measuring.store(false, Ordering::Relaxed);
    }
    let elapsed = measured_from.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = tasks.join_next().await {
        if let Ok(report) = done {
            reports.push(report);
        }
    }
    let finished_unix = unix_now_f64();
    reports.sort_by_key(|r| r.agent);
    let mut latencies: Vec<u32> = reports
        .iter()
        .flat_map(|r| r.latencies.iter().copied())
        .collect();
    latencies.sort_unstable();
    let mut windows: BTreeMap<u64, u64> = BTreeMap::new();
    for r in &reports {
        for (w, a) in &r.arrivals {
            *windows.entry(*w).or_default() += a.records;
        }
    }
    if let Some(path) = &args.arrivals {
        write_arrivals(path, &reports).with_context(|| path.display().to_string())?;
    }
    let measured = totals.measured_records.load(Ordering::Relaxed);
    let summary = serde_json::json!({
        "agents": args.agents,
        "endpoints": args.endpoints.len(),
        "batch_records": args.batch_records,
        "compression": args.compression,
        "unique": args.unique,
        "stream_per_agent": args.stream_per_agent,
        "catch_up_seconds": args.catch_up,
        "window_secs": args.window_secs,
        "windows": windows.len(),
        "started_unix": started_unix,
        "finished_unix": finished_unix,
        "records_acked": totals.records.load(Ordering::Relaxed),
        "batches_acked": totals.batches.load(Ordering::Relaxed),
        "duplicate_acks": totals.duplicates.load(Ordering::Relaxed),
        "errors": totals.errors.load(Ordering::Relaxed),
        "measured_seconds": elapsed,
        "records_per_second": measured as f64 / elapsed.max(1e-9),
        "ack_ms_p50": percentile(&latencies, 0.50),
        "ack_ms_p99": percentile(&latencies, 0.99),
        "ack_ms_max": percentile(&latencies, 1.0),
        "peak_rss_kib": peak_rss,
        "hwm_rss_kib": args.watch_pids.iter().map(|p| rss_kib(*p, "VmHWM:")).collect::<Vec<_>>(),
    });
    println!("{summary}");
    Ok(())
}

/// Writes `agent window_end records first_sent last_acked` lines, tab-separated.
fn write_arrivals(path: &Path, reports: &[AgentReport]) -> std::io::Result<()> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "# agent\twindow_end\trecords\tfirst_sent\tlast_acked")?;
    for r in reports {
        for (w, a) in &r.arrivals {
            writeln!(
                out,
                "{}\t{w}\t{}\t{:.3}\t{:.3}",
                r.agent, a.records, a.first_sent, a.last_acked
            )?;
        }
    }
    out.flush()
}

/// Reads what [`write_arrivals`] wrote: `(agent, window_end) → arrival`.
fn read_arrivals(path: &Path) -> anyhow::Result<BTreeMap<(usize, u64), Arrival>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let parsed = (|| -> Option<((usize, u64), Arrival)> {
            Some((
                (f.first()?.parse().ok()?, f.get(1)?.parse().ok()?),
                Arrival {
                    records: f.get(2)?.parse().ok()?,
                    first_sent: f.get(3)?.parse().ok()?,
                    last_acked: f.get(4)?.parse().ok()?,
                },
            ))
        })();
        let Some((key, arrival)) = parsed else {
            bail!("{} line {}: not an arrivals line", path.display(), n + 1);
        };
        out.insert(key, arrival);
    }
    Ok(out)
}

/// Every published file below `root` (hidden files and folders skipped), sorted.
fn output_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
            let path = entry.with_context(|| dir.display().to_string())?.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
            {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A stream of files: (account, region, flow-log id).
type Stream = (String, String, String);

/// A published file: its stream, window end and size.
struct OutputFile {
    stream: Stream,
    window_end: u64,
    bytes: u64,
}

fn output_file(path: &Path) -> anyhow::Result<OutputFile> {
    let shown = path.display().to_string();
    let key = parse_key(&shown).with_context(|| format!("{shown}: not a flow log file name"))?;
    let bytes = std::fs::metadata(path)
        .with_context(|| shown.clone())?
        .len();
    Ok(OutputFile {
        stream: (key.account_id, key.region, key.flow_log_id),
        window_end: u64::try_from(key.file_timestamp.timestamp()).unwrap_or(0),
        bytes,
    })
}

fn load_run(expect: &Path) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(
        &std::fs::read_to_string(expect).with_context(|| expect.display().to_string())?,
    )?)
}

fn verify(dir: &Path, expect: &Path, window_secs: u64) -> anyhow::Result<()> {
    let run = load_run(expect)?;
    if run["unique"] != serde_json::Value::Bool(true) {
        bail!("{}: not a --unique run", expect.display());
    }
    if window_secs == 0 {
        bail!("--window-secs must be at least 1");
    }
    let expected = run["records_acked"].as_u64().unwrap_or(0);
    let batch_records = run["batch_records"].as_u64().unwrap_or(0);
    let per_agent = run["stream_per_agent"].as_bool().unwrap_or(false);
    let paths = output_files(dir)?;
    // Markers of every record read, sorted below: doubles are neighbours.
    let mut seen: Vec<u64> = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    let (mut unmarked, mut wrong_window, mut wrong_account) = (0u64, 0u64, 0u64);
    let mut accounts: HashMap<usize, String> = HashMap::new();
    for path in &paths {
        let file = output_file(path)?;
        let source =
            RecordSource::open_path(path, None).with_context(|| path.display().to_string())?;
        for record in source {
            let r = record.with_context(|| path.display().to_string())?;
            let Some(b) = r.bytes else {
                unmarked += 1;
                continue;
            };
            seen.push(b);
            if r.end.or(r.start).map(|t| window_end(t, window_secs)) != Some(file.window_end) {
                wrong_window += 1;
            }
            if per_agent {
                let agent = (b >> 40) as usize;
                let account = accounts
                    .entry(agent)
                    .or_insert_with(|| agent_account(agent));
                if *account != file.stream.0 {
                    wrong_account += 1;
                }
            }
        }
    }
    seen.sort_unstable();
    let total = seen.len() as u64;
    let (mut distinct, mut doubled, mut batches) = (0u64, 0u64, 0u64);
    for (i, b) in seen.iter().enumerate() {
        if i == 0 || seen[i - 1] != *b {
            distinct += 1;
        } else if i < 2 || seen[i - 2] != *b {
            doubled += 1;
        }
        if i == 0 || seen[i - 1] >> 20 != b >> 20 {
            batches += 1;
        }
    }
    println!(
        "{} files, {total} records ({distinct} distinct, {doubled} doubled), {batches} batches; expected {expected}; {wrong_window} in another window's file{}{}",
        paths.len(),
        if per_agent {
            format!(", {wrong_account} in another agent's stream")
        } else {
            String::new()
        },
        if unmarked > 0 {
            format!(", {unmarked} without a marker")
        } else {
            String::new()
        },
    );
    if doubled > 0
        || total != expected
        || batches * batch_records != expected
        || wrong_window > 0
        || wrong_account > 0
        || unmarked > 0
    {
        bail!("the output does not equal the input");
    }
    Ok(())
}

/// The most files the rule allows for one stream in one window whose records were sent
/// from `first_sent` and acked by `last_acked`: the regular file if some arrived before
/// the window closed (its end + grace), one late file per grace period touched after
/// that, and one more per file the size cap sealed (at least half the cap).
fn rule_max(window_end: u64, arrival: &Arrival, grace: u64, capped_files: u64) -> u64 {
    let close = (window_end + grace) as f64;
    let g = grace.max(1) as f64;
    let regular = u64::from(arrival.first_sent < close);
    let late = if arrival.last_acked > close {
        let from = arrival.first_sent.max(close);
        ((arrival.last_acked - close) / g).floor() as u64 - ((from - close) / g).floor() as u64 + 1
    } else {
        0
    };
    regular + late + capped_files
}

/// `(min, median, max)` of a non-empty sorted slice.
fn spread(sorted: &[u64]) -> (u64, u64, u64) {
    match sorted {
        [] => (0, 0, 0),
        [first, ..] => (*first, sorted[sorted.len() / 2], sorted[sorted.len() - 1]),
    }
}

/// Counts of one window, or of all of them.
#[derive(Debug, Default)]
struct FileCount {
    /// Files per stream with files in the window, sorted.
    per_stream: Vec<u64>,
    files: u64,
    /// Streams the generator pushed records of in the window (at least one file each).
    rule_min: u64,
    /// The most files the rule allows.
    rule_max: u64,
    /// Streams of the window with more files than the rule allows.
    over: u64,
    /// Streams of the window with files but no records pushed (in no arrival).
    unexpected: u64,
    /// Streams of the window with records pushed but no file.
    missing: u64,
}

fn files(args: &FilesArgs) -> anyhow::Result<()> {
    let run = load_run(&args.expect)?;
    let per_agent = run["stream_per_agent"].as_bool().unwrap_or(false);
    // What was pushed, per (account, window): per agent, or all agents together when
    // they share their accounts (the key's account is then left empty).
    let mut pushed: BTreeMap<(String, u64), Arrival> = BTreeMap::new();
    for ((agent, w), a) in read_arrivals(&args.arrivals)? {
        let account = if per_agent {
            agent_account(agent)
        } else {
            String::new()
        };
        pushed
            .entry((account, w))
            .and_modify(|e| {
                e.records += a.records;
                e.first_sent = e.first_sent.min(a.first_sent);
                e.last_acked = e.last_acked.max(a.last_acked);
            })
            .or_insert(a);
    }
    // Files per (window, stream): their sizes.
    let mut groups: BTreeMap<(u64, Stream), Vec<u64>> = BTreeMap::new();
    for path in output_files(&args.dir)? {
        let f = output_file(&path)?;
        groups
            .entry((f.window_end, f.stream))
            .or_default()
            .push(f.bytes);
    }
    let mut windows: BTreeMap<u64, FileCount> = BTreeMap::new();
    let mut found: BTreeSet<(String, u64)> = BTreeSet::new();
    for ((w, stream), sizes) in &groups {
        let count = windows.entry(*w).or_default();
        let n = sizes.len() as u64;
        count.files += n;
        count.per_stream.push(n);
        let key = (
            if per_agent {
                stream.0.clone()
            } else {
                String::new()
            },
            *w,
        );
        let capped = sizes
            .iter()
            .filter(|b| **b >= args.max_file_bytes / 2)
            .count() as u64;
        match pushed.get(&key) {
            Some(a) => {
                let max = rule_max(*w, a, args.grace, capped);
                count.rule_max += max;
                count.over += u64::from(n > max);
                found.insert(key);
            }
            None => count.unexpected += 1,
        }
    }
    for key in pushed.keys() {
        let count = windows.entry(key.1).or_default();
        if per_agent {
            count.rule_min += 1;
        } else {
            // Agents share their accounts: every stream with files in the window was pushed.
            count.rule_min += count.per_stream.len().max(1) as u64;
        }
        count.missing += u64::from(!found.contains(key));
    }
    println!(
        "{:<16} {:>8} {:>8} {:>22} {:>17} {:>8}",
        "window", "streams", "files", "per stream min/med/max", "rule (min-max)", "over"
    );
    let mut total = FileCount::default();
    for (w, c) in &mut windows {
        c.per_stream.sort_unstable();
        let (lo, mid, hi) = spread(&c.per_stream);
        println!(
            "{:<16} {:>8} {:>8} {:>22} {:>17} {:>8}{}{}",
            window_name(*w),
            c.per_stream.len(),
            c.files,
            format!("{lo}/{mid}/{hi}"),
            format!("{}-{}", c.rule_min, c.rule_max),
            c.over,
            if c.unexpected > 0 {
                format!(
                    "  {} streams with files but no records pushed",
                    c.unexpected
                )
            } else {
                String::new()
            },
            if c.missing > 0 {
                format!("  {} streams pushed but without a file", c.missing)
            } else {
                String::new()
            },
        );
        total.per_stream.extend_from_slice(&c.per_stream);
        total.files += c.files;
        total.rule_min += c.rule_min;
        total.rule_max += c.rule_max;
        total.over += c.over;
        total.unexpected += c.unexpected;
        total.missing += c.missing;
    }
    total.per_stream.sort_unstable();
    let (lo, mid, hi) = spread(&total.per_stream);
    let streams: BTreeSet<&Stream> = groups.keys().map(|(_, s)| s).collect();
    let distinct =
        |f: fn(&Stream) -> &String| streams.iter().map(|s| f(s)).collect::<BTreeSet<_>>().len();
    let within = total.over == 0 && total.unexpected == 0 && total.missing == 0;
    println!(
        "{} streams seen (distinct accounts {}, regions {}, flow-log ids {}), {} windows, {} stream-windows, {} files; files per stream per window min {lo} / median {mid} / max {hi}; the rule (grace {} s): {} to {} files; {}",
        streams.len(),
        distinct(|s| &s.0),
        distinct(|s| &s.1),
        distinct(|s| &s.2),
        windows.len(),
        total.per_stream.len(),
        total.files,
        args.grace,
        total.rule_min,
        total.rule_max,
        if within {
            "within the rule".to_owned()
        } else {
            format!(
                "NOT within the rule: {} stream-windows over it, {} with files but no records pushed, {} pushed without a file",
                total.over, total.unexpected, total.missing
            )
        }
    );
    if let Some(path) = &args.json {
        let summary = serde_json::json!({
            "streams": streams.len(),
            "windows": windows.len(),
            "stream_windows": total.per_stream.len(),
            "files": total.files,
            "per_stream_min": lo,
            "per_stream_median": mid,
            "per_stream_max": hi,
            "rule_min": total.rule_min,
            "rule_max": total.rule_max,
            "over": total.over,
            "unexpected": total.unexpected,
            "missing": total.missing,
            "within_rule": within,
        });
        std::fs::write(path, format!("{summary}\n")).with_context(|| path.display().to_string())?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Pki { dir } => {
            let pki = flowlog_tests::pki::TestPki::generate(&dir)?;
            println!("{}", pki.ca.display());
            Ok(())
        }
        Command::Tokens { agents } => {
            for i in 0..agents {
                // The simulated agents publish under their own accounts (and regions).
                println!("{} {} account=* region=*", agent_id(i), token(i));
            }
            Ok(())
        }
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run(args)),
        Command::Verify {
            dir,
            expect,
            window_secs,
        } => verify(&dir, &expect, window_secs),
        Command::Files(args) => files(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_names_match_file_names() {
        // The AWS example: records of 16:15:00-16:19:59 → file 16:20.
        assert_eq!(window_name(1_529_511_600), "20180620T1620Z");
        assert_eq!(window_name(1_709_164_800), "20240229T0000Z");
        assert_eq!(window_end(1_529_511_300, 300), 1_529_511_600);
        assert_eq!(window_end(1_529_511_599, 300), 1_529_511_600);
    }

    #[test]
    fn catch_up_slices_cover_the_span_in_order() {
        let t = Times::CatchUp {
            from: 1_000,
            span: 7_200,
            batches: 24,
        };
        assert_eq!(t.slice(1), (1_000, 1_300));
        assert_eq!(t.slice(2), (1_300, 1_600));
        assert_eq!(t.slice(24), (7_900, 8_200));
    }

    #[test]
    fn rule_counts_regular_late_and_capped_files() {
        let a = |first_sent, last_acked| Arrival {
            records: 1,
            first_sent,
            last_acked,
        };
        // Window 1000, closes at 1060.
        assert_eq!(rule_max(1_000, &a(900.0, 950.0), 60, 0), 1);
        assert_eq!(rule_max(1_000, &a(900.0, 950.0), 60, 2), 3);
        // All late, within one grace period: one late file.
        assert_eq!(rule_max(1_000, &a(2_000.0, 2_010.0), 60, 0), 1);
        // All late, across a period boundary (1060 + 16 × 60 = 2020).
        assert_eq!(rule_max(1_000, &a(2_010.0, 2_030.0), 60, 0), 2);
        // Regular, then late until 1200: periods from 1060, 1120 and 1180.
        assert_eq!(rule_max(1_000, &a(1_000.0, 1_200.0), 60, 0), 4);
    }
}
