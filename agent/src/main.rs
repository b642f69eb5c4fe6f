//! Command-line entry point of `flowlog-agent`: one source (live capture or `--replay`)
//! feeding one output (stdout, files through the publishing pipeline, or aggregators
//! through the spool).
//!
//! ```text
//! live capture ─┐                 ┌─▶ stdout         (--stdout)
//!               ├─▶ RecordOutput ─┼─▶ files          (standalone, the default)
//! --replay FILE ┘                 └─▶ spool ─▶ aggregators ([aggregator])
//! ```
//!
//! Each source is written once ([`run_live`], [`run_replay`]) and sees an output only
//! through [`RecordOutput`]; what an output does when its source ends (seal files, drain the
//! spool) is its own. SIGINT/SIGTERM are registered once, in `main`, and end either source.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

use flowlog_agent::capture;
use flowlog_agent::config::{self, AgentSettings};
use flowlog_agent::metrics::AgentMetrics;
use flowlog_agent::prepare::prepare;
use flowlog_agent::replay::{ReplayError, ReplayStats, replay};
use flowlog_agent::ship::settings::ShipSettings;
use flowlog_agent::ship::{self, Batcher, Overflow, Pending, Shipper};
use flowlog_formats::FlowRecord;
use flowlog_formats::text::TextWriter;

/// Exit code for invalid usage (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

/// flowlog host agent: turns the packets of this host's interfaces into VPC flow log records.
///
/// Captures on the configured interfaces (default: every up, non-loopback interface; needs
/// CAP_NET_RAW), or reads a pcap/pcapng file with `--replay` (packet times as the clock).
/// Records go to files (standalone mode, the default: `[output]`, `[sink]` and `[state]` as
/// for flowlog-aggregator; `./flowlogs/AWSLogs/...` unless configured otherwise), to the
/// aggregators of `[aggregator]` (through the disk spool of `[spool]`), or to stdout with
/// `--stdout`. SIGINT/SIGTERM close the current interval, write or spool its records and
/// exit.
#[derive(Debug, Parser)]
#[command(name = "flowlog-agent", version, about, long_about)]
struct Cli {
    /// The TOML config file ([flow_log], [output], [[interface]], [aggregator], [spool],
    /// [sink], [state], ...).
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Read packets from a pcap/pcapng file instead of capturing. With [aggregator], exits
    /// 0 once every record of the file is acknowledged; run again after a crash, it resumes.
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,
    /// Print records to stdout (header line first) in the configured format instead of
    /// writing files.
    #[arg(long)]
    stdout: bool,
    /// Validate the config and exit (0 = usable, 64 = not).
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match config::load(&cli.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if cli.check_config {
        if let Some(warning) = settings
            .ship
            .as_ref()
            .and_then(|ship| ship::settings::token_file_warning(&ship.token_file))
        {
            eprintln!("warning: {warning}");
        }
        eprintln!("{}: ok", cli.config.display());
        return ExitCode::SUCCESS;
    }
    let stop = match stop_flag() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let source = match &cli.replay {
        Some(path) => Source::Replay(path),
        None => Source::Live,
    };
    if let Some(ship) = &settings.ship
        && !cli.stdout
    {
        return ship_mode(&settings, ship, source, stop);
    }
    let metrics = AgentMetrics::new();
    let output = match open_output(&settings, cli.stdout, &metrics) {
        Ok(o) => o,
        Err(code) => return code,
    };
    local_mode(&settings, output, source, &metrics, stop)
}

/// Where records come from.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    /// The interfaces of this host, until SIGINT/SIGTERM.
    Live,
    /// A capture file (`--replay`).
    Replay(&'a Path),
}

/// What every output does with the records of a source (already through
/// [`prepare`]).
trait RecordOutput {
    /// Takes one record.
    fn write(&mut self, record: FlowRecord) -> Result<(), String>;
    /// Takes the records of one closed interval.
    fn write_all(&mut self, records: Vec<FlowRecord>) -> Result<(), String> {
        records.into_iter().try_for_each(|r| self.write(r))
    }
    /// Live capture had nothing for `idle`.
    fn idle(&mut self, _idle: Duration) -> Result<(), String> {
        Ok(())
    }
    /// Where records go, for the start-up line of live capture.
    fn describe(&self) -> String;
    /// What SIGINT/SIGTERM does, for the start-up line of live capture.
    fn on_stop(&self) -> String {
        "writes the open interval and exits".to_owned()
    }
}

/// How a source ended, when it did not complete.
#[derive(Debug)]
enum SourceError {
    /// Capture did not start, or reading stopped on an error; the message names the input.
    Failed(String),
    /// SIGINT/SIGTERM during a replay.
    Interrupted,
}

/// Captures until SIGINT/SIGTERM, handing each closed interval's records to `output`. Errors
/// of the output are printed and make the run fail, but capture goes on.
fn run_live(
    settings: &AgentSettings,
    output: &mut dyn RecordOutput,
    metrics: &AgentMetrics,
    stop: Arc<AtomicBool>,
) -> Result<bool, SourceError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    let threads = capture::start(&settings.live(), stop, tx)
        .map_err(|e| SourceError::Failed(e.to_string()))?;
    metrics.set_capture(threads.stats());
    eprintln!(
        "flowlog-agent: capturing, {}-second intervals, records to {}; SIGINT/SIGTERM (Ctrl-C) \
         {}",
        settings.interval_secs,
        output.describe(),
        output.on_stop()
    );
    let mut ok = true;
    let mut failed = |e: String| {
        eprintln!("error: {e}");
        ok = false;
    };
    let idle = Duration::from_millis(500);
    loop {
        match rx.recv_timeout(idle) {
            Ok((_interface, records)) => {
                let mut kept = Vec::with_capacity(records.len());
                for mut r in records {
                    if prepare(settings, &mut r) {
                        metrics.observe_record(&r);
                        kept.push(r);
                    } else {
                        metrics.records_filtered.inc();
                    }
                }
                if let Err(e) = output.write_all(kept) {
                    failed(e);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = output.idle(idle) {
                    failed(e);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    threads.join();
    Ok(ok)
}

/// Replays `path` into `output`, leaving out its first `skip` records (they were handled by
/// an earlier run). Stops at SIGINT/SIGTERM.
fn run_replay(
    settings: &AgentSettings,
    path: &Path,
    output: &mut dyn RecordOutput,
    metrics: &AgentMetrics,
    stop: &AtomicBool,
    mut skip: u64,
) -> Result<ReplayStats, SourceError> {
    let mut failure: Option<String> = None;
    let result = replay(settings, path, &mut |r| {
        if stop.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("interrupted"));
        }
        if skip > 0 {
            skip -= 1;
            return Ok(());
        }
        metrics.observe_record(&r);
        output.write(r).map_err(|e| {
            failure = Some(e.clone());
            std::io::Error::other(e)
        })
    });
    result.map_err(|e| {
        if stop.load(Ordering::Relaxed) {
            SourceError::Interrupted
        } else {
            match failure {
                Some(f) => SourceError::Failed(format!("{}: {f}", path.display())),
                // A capture file's own errors name it already.
                None => SourceError::Failed(match &e {
                    ReplayError::Pcap(_) => chain(&e),
                    _ => format!("{}: {}", path.display(), chain(&e)),
                }),
            }
        }
    })
}

/// stdout or files: runs the source, then flushes stdout or seals and publishes the files.
fn local_mode(
    settings: &AgentSettings,
    mut output: Output,
    source: Source<'_>,
    metrics: &AgentMetrics,
    stop: Arc<AtomicBool>,
) -> ExitCode {
    let ran = match source {
        Source::Live => run_live(settings, &mut output, metrics, stop),
        Source::Replay(path) => {
            run_replay(settings, path, &mut output, metrics, &stop, 0).map(|stats| {
                report_replay(&stats);
                true
            })
        }
    };
    // Whatever the source did, what it wrote is flushed or sealed.
    let finished = output.finish();
    let mut status = ExitCode::SUCCESS;
    match ran {
        Ok(true) => {}
        Ok(false) => status = ExitCode::FAILURE,
        Err(SourceError::Failed(e)) => {
            eprintln!("error: {e}");
            status = ExitCode::FAILURE;
        }
        Err(SourceError::Interrupted) => {
            eprintln!("error: interrupted");
            status = ExitCode::FAILURE;
        }
    }
    if let Err(e) = finished {
        eprintln!("error: {e}");
        status = ExitCode::FAILURE;
    }
    status
}

/// Where records go without `[aggregator]` (or with `--stdout`).
enum Output {
    /// `--stdout`: text lines in the configured format.
    Stdout(TextWriter<std::io::LineWriter<std::io::Stdout>>),
    /// Standalone mode: the publishing pipeline.
    #[cfg(feature = "standalone")]
    Files(Box<flowlog_agent::standalone::Publisher>),
}

impl RecordOutput for Output {
    fn write(&mut self, record: FlowRecord) -> Result<(), String> {
        match self {
            Output::Stdout(w) => w
                .write_record(&record)
                .map_err(|e| format!("writing to stdout failed: {e}")),
            #[cfg(feature = "standalone")]
            Output::Files(p) => p.push(record).map_err(|e| chain(&e)),
        }
    }

    fn write_all(&mut self, records: Vec<FlowRecord>) -> Result<(), String> {
        match self {
            Output::Stdout(w) => {
                for r in &records {
                    w.write_record(r)
                        .map_err(|e| format!("writing to stdout failed: {e}"))?;
                }
                w.flush_buffer()
                    .map_err(|e| format!("writing to stdout failed: {e}"))
            }
            #[cfg(feature = "standalone")]
            Output::Files(p) => p.submit(records).map_err(|e| chain(&e)),
        }
    }

    fn describe(&self) -> String {
        match self {
            Output::Stdout(_) => "stdout".to_owned(),
            #[cfg(feature = "standalone")]
            Output::Files(p) => p.describe(),
        }
    }
}

impl Output {
    /// Flushes stdout, or seals the open files and waits for their upload.
    fn finish(self) -> Result<(), String> {
        match self {
            Output::Stdout(w) => w
                .finish()
                .and_then(|mut w| w.flush())
                .map_err(|e| format!("writing to stdout failed: {e}")),
            #[cfg(feature = "standalone")]
            Output::Files(p) => {
                let target = p.describe();
                let summary = p.finish(None).map_err(|e| chain(&e))?;
                eprintln!(
                    "published {} file(s), {} records, {} bytes to {target}",
                    summary.stats.files_published,
                    summary.stats.records_published,
                    summary.stats.bytes_published,
                );
                if summary.published {
                    Ok(())
                } else {
                    Err(
                        "some files are still staged in the state directory; they are \
                         published at the next start"
                            .to_owned(),
                    )
                }
            }
        }
    }
}

fn open_output(
    settings: &AgentSettings,
    stdout: bool,
    metrics: &AgentMetrics,
) -> Result<Output, ExitCode> {
    if stdout {
        return TextWriter::new(
            std::io::LineWriter::new(std::io::stdout()),
            settings.log_format.clone(),
        )
        .map(Output::Stdout)
        .map_err(|e| {
            eprintln!("error: writing to stdout failed: {e}");
            ExitCode::FAILURE
        });
    }
    open_files(settings, metrics)
}

#[cfg(feature = "standalone")]
fn open_files(settings: &AgentSettings, metrics: &AgentMetrics) -> Result<Output, ExitCode> {
    use flowlog_publish::telemetry;
    let service = &settings.publish.service;
    if let Err(e) = telemetry::init_tracing(service.log_format, &service.log_level) {
        eprintln!("error: {e}");
        return Err(ExitCode::from(EX_USAGE));
    }
    flowlog_agent::standalone::Publisher::start(settings, |registry| metrics.register(registry))
        .map(|p| Output::Files(Box::new(p)))
        .map_err(|e| {
            eprintln!("error: {}", chain(&e));
            ExitCode::FAILURE
        })
}

#[cfg(not(feature = "standalone"))]
fn open_files(_settings: &AgentSettings, _metrics: &AgentMetrics) -> Result<Output, ExitCode> {
    eprintln!(
        "error: this flowlog-agent is built without standalone output (cargo feature \
         `standalone`); set [aggregator] to ship records to an aggregator, or use --stdout"
    );
    Err(ExitCode::from(EX_USAGE))
}

fn report_replay(stats: &ReplayStats) {
    let skipped: u64 = stats.skipped.values().sum();
    let reasons: Vec<String> = stats
        .skipped
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    eprintln!(
        "replayed {} packets ({} skipped{}), {} records",
        stats.packets,
        skipped,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(": {}", reasons.join(", "))
        },
        stats.records
    );
}

/// Installs SIGINT/SIGTERM handlers that set the returned flag.
fn stop_flag() -> Result<Arc<AtomicBool>, ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("error: cannot install the signal handler: {e}");
            return Err(ExitCode::FAILURE);
        }
    }
    Ok(stop)
}

fn chain(e: &dyn std::error::Error) -> String {
    flowlog_runtime::error_chain(e)
}

/// Aggregators (`[aggregator]` set, no `--stdout`): records go to the spool in batches, and
/// the shipper delivers them.
struct ShipOutput<'a> {
    batcher: Batcher<'a>,
    describe: String,
    on_stop: String,
}

impl RecordOutput for ShipOutput<'_> {
    fn write(&mut self, record: FlowRecord) -> Result<(), String> {
        self.batcher.push(record).map_err(|e| chain(&e))
    }

    fn idle(&mut self, idle: Duration) -> Result<(), String> {
        self.batcher.flush_if_idle(idle).map_err(|e| chain(&e))
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn on_stop(&self) -> String {
        self.on_stop.clone()
    }
}

/// Shipping to aggregators (`[aggregator]` set, no `--stdout`).
fn ship_mode(
    settings: &AgentSettings,
    ship_settings: &ShipSettings,
    source: Source<'_>,
    stop: Arc<AtomicBool>,
) -> ExitCode {
    if let Err(e) = ship::service::init_logs(&ship_settings.service) {
        eprintln!("error: {e}");
        return ExitCode::from(EX_USAGE);
    }
    if let Some(warning) = ship::settings::token_file_warning(&ship_settings.token_file) {
        tracing::warn!(token_file = %ship_settings.token_file.display(), "{warning}");
    }
    let urls: Vec<String> = ship_settings
        .endpoints
        .iter()
        .map(|e| e.url.clone())
        .collect();
    let metrics = AgentMetrics::with_shipping(&urls);
    let shipper = match Shipper::start(ship_settings, &metrics) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return ExitCode::FAILURE;
        }
    };
    match source {
        Source::Replay(path) => {
            ship_replay(settings, ship_settings, path, shipper, &metrics, &stop)
        }
        Source::Live => ship_live(settings, ship_settings, shipper, &metrics, stop),
    }
}

/// Stops the shipper and reports what stays in the spool.
fn stop_shipper(shipper: Shipper) -> Result<Pending, ExitCode> {
    let dir = shipper.spool_dir().display().to_string();
    match shipper.stop() {
        Ok(left) => {
            if left.batches > 0 {
                eprintln!(
                    "{} batches ({} records) are not acknowledged yet; they stay in the spool \
                     {dir} and are sent at the next start",
                    left.batches, left.records
                );
            }
            Ok(left)
        }
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            Err(ExitCode::FAILURE)
        }
    }
}

/// `--replay` with `[aggregator]`: spools the file's records (resuming after the records an
/// earlier run spooled) and exits 0 once every one is acknowledged.
fn ship_replay(
    settings: &AgentSettings,
    ship_settings: &ShipSettings,
    path: &Path,
    shipper: Shipper,
    metrics: &AgentMetrics,
    stop: &AtomicBool,
) -> ExitCode {
    let stopped = || stop.load(Ordering::Relaxed);
    let tag = match ship::replay_input_tag(path, &settings.replay_identity()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            let _ = stop_shipper(shipper);
            return ExitCode::FAILURE;
        }
    };
    if shipper.input_finished(tag) {
        eprintln!(
            "{}: every record of this input was spooled by an earlier run; delivering what \
             the spool still holds",
            path.display()
        );
        return drain_replay(shipper, ship_settings, &stopped);
    }
    let resume = match shipper.mark() {
        Some(m) if m.input == tag => m.records,
        _ => 0,
    };
    if resume > 0 {
        eprintln!(
            "{}: resuming: the first {resume} records were spooled by an earlier run",
            path.display()
        );
    }
    let fill = |r: &mut FlowRecord| {
        prepare(settings, r);
    };
    let batcher = Batcher::new(
        &shipper,
        settings.interval_secs,
        &fill,
        &stopped,
        Overflow::Wait,
        Some((tag, resume)),
    );
    let mut output = ShipOutput {
        batcher,
        describe: String::new(),
        on_stop: String::new(),
    };
    let stats = match run_replay(settings, path, &mut output, metrics, stop, resume) {
        Ok(stats) => stats,
        Err(e) => {
            let interrupted = matches!(e, SourceError::Interrupted);
            if !interrupted {
                // What was read is spooled (and marked): a re-run goes on from there.
                if let Err(e) = output.batcher.flush() {
                    eprintln!("error: {}", chain(&e));
                }
            }
            match e {
                SourceError::Failed(e) => eprintln!("error: {e}"),
                SourceError::Interrupted => {
                    eprintln!("error: {}: interrupted", path.display());
                }
            }
            drop(output);
            let deadline = Instant::now() + ship_settings.shutdown_grace;
            shipper.wait_drained(Some(deadline), &|| false);
            if interrupted {
                eprintln!("run the same command again to resume");
            }
            let _ = stop_shipper(shipper);
            return ExitCode::FAILURE;
        }
    };
    let mut batcher = output.batcher;
    let flushed = batcher.flush();
    let (batches, spooled, dropped) = (batcher.batches, batcher.records, batcher.dropped);
    let handled = batcher.handled().unwrap_or(resume);
    drop(batcher);
    if let Err(e) = flushed.and_then(|()| shipper.finish_input(tag, handled)) {
        eprintln!("error: {}", chain(&e));
        let _ = stop_shipper(shipper);
        return ExitCode::FAILURE;
    }
    report_replay(&stats);
    eprintln!(
        "spooled {spooled} records in {batches} batches{}{}",
        if resume > 0 {
            format!(" ({resume} spooled by an earlier run)")
        } else {
            String::new()
        },
        if dropped > 0 {
            format!("; {dropped} records replaced by SKIPDATA (spool full)")
        } else {
            String::new()
        }
    );
    drain_replay(shipper, ship_settings, &stopped)
}

/// Waits until the spool is delivered (exit 0); on SIGINT/SIGTERM gives it the shutdown
/// grace and exits 1.
fn drain_replay(
    shipper: Shipper,
    ship_settings: &ShipSettings,
    stopped: &dyn Fn() -> bool,
) -> ExitCode {
    let left = shipper.wait_drained(None, stopped);
    if left.batches > 0 {
        let deadline = Instant::now() + ship_settings.shutdown_grace;
        shipper.wait_drained(Some(deadline), &|| false);
        let _ = stop_shipper(shipper);
        eprintln!("interrupted; run the same command again to deliver the rest");
        return ExitCode::FAILURE;
    }
    match stop_shipper(shipper) {
        Ok(_) => {
            eprintln!("every record is acknowledged by the aggregator");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Live capture with `[aggregator]`: records are spooled as their intervals close and
/// shipped; SIGINT/SIGTERM spool the open interval and drain the spool within
/// `aggregator.shutdown_grace`.
fn ship_live(
    settings: &AgentSettings,
    ship_settings: &ShipSettings,
    shipper: Shipper,
    metrics: &AgentMetrics,
    stop: Arc<AtomicBool>,
) -> ExitCode {
    let fill = |r: &mut FlowRecord| {
        prepare(settings, r);
    };
    let never = || false;
    let batcher = Batcher::new(
        &shipper,
        settings.interval_secs,
        &fill,
        &never,
        Overflow::Replace,
        None,
    );
    let mut output = ShipOutput {
        batcher,
        describe: format!(
            "{} via the spool {}",
            ship_settings
                .endpoints
                .iter()
                .map(|e| e.url.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            ship_settings.spool.dir.display()
        ),
        on_stop: format!(
            "spools the open interval, delivers what it can within {} and exits",
            humantime::format_duration(ship_settings.shutdown_grace)
        ),
    };
    let mut status = ExitCode::SUCCESS;
    match run_live(settings, &mut output, metrics, stop) {
        Ok(true) => {}
        Ok(false) => status = ExitCode::FAILURE,
        Err(SourceError::Failed(e)) => {
            eprintln!("error: {e}");
            drop(output);
            let _ = stop_shipper(shipper);
            return ExitCode::FAILURE;
        }
        Err(SourceError::Interrupted) => {}
    }
    if let Err(e) = output.batcher.flush() {
        eprintln!("error: {}", chain(&e));
        status = ExitCode::FAILURE;
    }
    drop(output);
    let deadline = Instant::now() + ship_settings.shutdown_grace;
    let left = shipper.wait_drained(Some(deadline), &|| false);
    if left.batches == 0 {
        eprintln!("every spooled record is acknowledged by the aggregator");
    }
    if let Err(code) = stop_shipper(shipper) {
        return code;
    }
    status
}
