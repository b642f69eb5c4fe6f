//! Fleet load generator: N simulated agents push batches to one or more
//! `flowlog-aggregator serve` processes over gRPC with TLS, like real agents catching up
//! after an outage (each agent sends its next batch as soon as the last one is acked).
//!
//! ```text
//! fleet_load pki --dir DIR                     # test CA + server certificate
//! fleet_load tokens --agents N                 # the aggregator's tokens file, on stdout
//! fleet_load run --endpoint URL [--endpoint URL2] --ca DIR/ca.pem --agents N ...
//! fleet_load verify --dir OUTPUT --expect RUN.json
//! ```
//!
//! `run` prints one JSON line: records and batches acked, records/s over the measured
//! window, ack latency percentiles, and the peak RSS of the `--watch-pid` processes.
//! With `--unique`, every record carries `(agent, seq, index)` in its `bytes` field and
//! `verify` checks that the published files hold each pushed record exactly once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use clap::{Args, Parser, Subcommand};
use flowlog_formats::FlowRecord;
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
    /// Print the tokens file of N agents (`load-00001 <token>` lines).
    Tokens {
        #[arg(long)]
        agents: usize,
    },
    /// Push batches as N agents.
    Run(RunArgs),
    /// Check that the files below DIR hold every record of a `--unique` run exactly once.
    Verify {
        #[arg(long)]
        dir: PathBuf,
        /// The JSON line `run` printed.
        #[arg(long)]
        expect: PathBuf,
    },
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
    pool: Arc<Vec<Bytes>>,
    batch_records: usize,
    compression: Option<CompressionEncoding>,
    unique: bool,
    batches: Option<u64>,
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
    totals: Arc<Totals>,
}

async fn run_agent(a: AgentRun) -> Vec<u32> {
    let id = agent_id(a.index);
    let auth: tonic::metadata::MetadataValue<_> = match format!("Bearer {}", token(a.index)).parse()
    {
        Ok(v) => v,
        Err(_) => return Vec::new(),
    };
    let spool_id = 0x5eed_0000_0000_0000 | a.index as u64;
    let mut grpc = tonic::client::Grpc::new(a.channel)
        .max_encoding_message_size(flowlog_transport::MAX_MESSAGE_BYTES);
    if let Some(c) = a.compression {
        grpc = grpc.send_compressed(c).accept_compressed(c);
    }
    let path = http::uri::PathAndQuery::from_static("/flowlog.ingest.v1.Ingest/Push");
    let mut latencies = Vec::new();
    let mut template = if a.unique {
        template_records(a.batch_records, a.index as u64)
    } else {
        Vec::new()
    };
    let mut seq = 1u64;
    while !a.stop.load(Ordering::Relaxed) && a.batches.is_none_or(|b| seq <= b) {
        let body = if a.unique {
            for (i, r) in template.iter_mut().enumerate() {
                r.bytes = Some(unique_bytes(a.index, seq, i));
            }
            push_bytes(
                &id,
                spool_id,
                seq,
                &flowlog_transport::encode_batch(&template).encode_to_vec(),
            )
        } else {
            let batch = &a.pool[(a.index + seq as usize) % a.pool.len()];
            push_bytes(&id, spool_id, seq, batch)
        };
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
                    if reply.get_ref().duplicate {
                        a.totals.duplicates.fetch_add(1, Ordering::Relaxed);
                    } else {
                        a.totals.records.fetch_add(n, Ordering::Relaxed);
                    }
                    if a.measuring.load(Ordering::Relaxed) {
                        a.totals.measured_records.fetch_add(n, Ordering::Relaxed);
                        latencies.push(micros);
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
        seq += 1;
    }
    latencies
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
    let pool: Arc<Vec<Bytes>> = Arc::new(if args.unique {
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
    let mut tasks = tokio::task::JoinSet::new();
    for (index, channel) in channels.into_iter().enumerate() {
        tasks.spawn(run_agent(AgentRun {
            index,
            channel,
            pool: Arc::clone(&pool),
            batch_records: args.batch_records,
            compression,
            unique: args.unique,
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
    let mut latencies = Vec::new();
    let measured_from;
    if args.batches_per_agent.is_some() {
        measured_from = started;
        while !tasks.is_empty() {
            tokio::select! {
                done = tasks.join_next() => {
                    latencies.extend(done.and_then(Result::ok).unwrap_or_default());
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
        latencies.extend(done.unwrap_or_default());
    }
    latencies.sort_unstable();
    let measured = totals.measured_records.load(Ordering::Relaxed);
    let summary = serde_json::json!({
        "agents": args.agents,
        "endpoints": args.endpoints.len(),
        "batch_records": args.batch_records,
        "compression": args.compression,
        "unique": args.unique,
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

fn verify(dir: &std::path::Path, expect: &std::path::Path) -> anyhow::Result<()> {
    let run: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(expect).with_context(|| expect.display().to_string())?,
    )?;
    if run["unique"] != serde_json::Value::Bool(true) {
        bail!("{}: not a --unique run", expect.display());
    }
    let expected = run["records_acked"].as_u64().unwrap_or(0);
    let batch_records = run["batch_records"].as_u64().unwrap_or(0);
    let (files, records) = flowlog_tests::published_records(dir)?;
    let mut seen: HashMap<u64, u32> = HashMap::new();
    for b in records.iter().filter_map(|r| r.bytes) {
        *seen.entry(b).or_default() += 1;
    }
    let doubled = seen.values().filter(|&&n| n > 1).count();
    let total: u64 = seen.values().map(|&n| u64::from(n)).sum();
    let batches = seen
        .keys()
        .map(|b| b >> 20)
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    println!(
        "{files} files, {total} records ({} distinct, {doubled} doubled), {batches} batches; expected {expected}",
        seen.len()
    );
    if doubled > 0 || total != expected || batches * batch_records != expected {
        bail!("the output does not equal the input");
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
                println!("{} {}", agent_id(i), token(i));
            }
            Ok(())
        }
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run(args)),
        Command::Verify { dir, expect } => verify(&dir, &expect),
    }
}
