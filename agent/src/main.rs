//! Command-line entry point of `flowlog-agent`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::Parser;

use flowlog_agent::capture;
use flowlog_agent::config::{self, AgentSettings};
use flowlog_agent::metrics::AgentMetrics;
use flowlog_agent::replay::{ReplayStats, prepare, replay};
use flowlog_agent::ship::settings::ShipSettings;
use flowlog_agent::ship::{self, Batcher, Overflow, Pending, Shipper};
use flowlog_formats::FlowRecord;
use flowlog_formats::text::TextWriter;
use flowlog_runtime::error_chain;

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
    if let Some(ship) = &settings.ship
        && !cli.stdout
    {
        return ship_mode(&settings, ship, cli.replay.as_deref());
    }
    let metrics = AgentMetrics::new();
    let output = match open_output(&settings, cli.stdout, &metrics) {
        Ok(o) => o,
        Err(code) => return code,
    };
    match cli.replay {
        Some(path) => run_replay(&settings, &path, output, &metrics),
        None => live(&settings, output, &metrics),
    }
}

/// Where records go.
enum Output {
    /// `--stdout`: text lines in the configured format.
    Stdout(TextWriter<std::io::LineWriter<std::io::Stdout>>),
    /// Standalone mode: the publishing pipeline.
    #[cfg(feature = "standalone")]
    Files(Box<flowlog_agent::standalone::Publisher>),
}

impl Output {
    fn write(&mut self, record: FlowRecord) -> Result<(), String> {
        match self {
            Output::Stdout(w) => w
                .write_record(&record)
                .map_err(|e| format!("writing to stdout failed: {e}")),
            #[cfg(feature = "standalone")]
            Output::Files(p) => p
                .push(record)
                .map_err(|e| flowlog_runtime::error_chain_with_repeats(&e)),
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
            Output::Files(p) => p
                .submit(records)
                .map_err(|e| flowlog_runtime::error_chain_with_repeats(&e)),
        }
    }

    fn describe(&self) -> String {
        match self {
            Output::Stdout(_) => "stdout".to_owned(),
            #[cfg(feature = "standalone")]
            Output::Files(p) => p.describe(),
        }
    }

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
                let summary = p
                    .finish(None)
                    .map_err(|e| flowlog_runtime::error_chain_with_repeats(&e))?;
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
    use flowlog_aggregator::telemetry;
    let service = &settings.publish.service;
    if let Err(e) = telemetry::init_tracing(service.log_format, &service.log_level) {
        eprintln!("error: {e}");
        return Err(ExitCode::from(EX_USAGE));
    }
    flowlog_agent::standalone::Publisher::start(
        settings,
        |registry| metrics.register(registry),
        telemetry::Health::new(),
    )
    .map(|p| Output::Files(Box::new(p)))
    .map_err(|e| {
        eprintln!("error: {}", flowlog_runtime::error_chain_with_repeats(&e));
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

fn run_replay(
    settings: &AgentSettings,
    path: &std::path::Path,
    mut output: Output,
    metrics: &AgentMetrics,
) -> ExitCode {
    let mut failure: Option<String> = None;
    let result = replay(settings, path, &mut |r| {
        metrics.observe_record(&r);
        output.write(r).map_err(|e| {
            failure = Some(e.clone());
            std::io::Error::other(e)
        })
    });
    let finished = output.finish();
    match (result, finished) {
        (Ok(stats), Ok(())) => {
            report_replay(&stats);
            ExitCode::SUCCESS
        }
        (Err(e), _) => {
            match failure {
                Some(f) => eprintln!("error: {f}"),
                None => eprintln!("error: {}: {e}", path.display()),
            }
            ExitCode::FAILURE
        }
        (_, Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
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

/// Captures until SIGINT/SIGTERM, writing records as their intervals close.
fn live(settings: &AgentSettings, mut output: Output, metrics: &AgentMetrics) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("error: cannot install the signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    let threads = match capture::start(settings, stop, tx) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            // Nothing was captured: close the (empty) output so the pipeline stops cleanly.
            let _ = output.finish();
            return ExitCode::FAILURE;
        }
    };
    metrics.set_capture(threads.stats());
    eprintln!(
        "flowlog-agent: capturing, {}-second intervals, records to {}; SIGINT/SIGTERM (Ctrl-C) \
         writes the open interval and exits",
        settings.interval_secs,
        output.describe()
    );
    let mut status = ExitCode::SUCCESS;
    for (_interface, records) in rx {
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
            eprintln!("error: {e}");
            status = ExitCode::FAILURE;
        }
    }
    threads.join();
    if let Err(e) = output.finish() {
        eprintln!("error: {e}");
        status = ExitCode::FAILURE;
    }
    status
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

/// Shipping to aggregators (`[aggregator]` set, no `--stdout`).
fn ship_mode(
    settings: &AgentSettings,
    ship_settings: &ShipSettings,
    replay_path: Option<&std::path::Path>,
) -> ExitCode {
    if let Err(e) = ship::service::init_logs(&ship_settings.service) {
        eprintln!("error: {e}");
        return ExitCode::from(EX_USAGE);
    }
    if let Some(warning) = ship::settings::token_file_warning(&ship_settings.token_file) {
        tracing::warn!(token_file = %ship_settings.token_file.display(), "{warning}");
    }
    let stop = match stop_flag() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let urls: Vec<String> = ship_settings
        .endpoints
        .iter()
        .map(|e| e.url.clone())
        .collect();
    let metrics = AgentMetrics::with_shipping(&urls);
    let shipper = match Shipper::start(ship_settings, &metrics) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    match replay_path {
        Some(path) => ship_replay(settings, ship_settings, path, shipper, &metrics, &stop),
        None => ship_live(settings, ship_settings, shipper, &metrics, stop),
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
            eprintln!("error: {}", error_chain(&e));
            Err(ExitCode::FAILURE)
        }
    }
}

/// `--replay` with `[aggregator]`: spools the file's records (resuming after the records an
/// earlier run spooled) and exits 0 once every one is acknowledged.
fn ship_replay(
    settings: &AgentSettings,
    ship_settings: &ShipSettings,
    path: &std::path::Path,
    shipper: Shipper,
    metrics: &AgentMetrics,
    stop: &AtomicBool,
) -> ExitCode {
    use std::sync::atomic::Ordering;
    let stopped = || stop.load(Ordering::Relaxed);
    let tag = match ship::replay_input_tag(path, settings) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
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
    let mut batcher = Batcher::new(
        &shipper,
        settings,
        &fill,
        &stopped,
        Overflow::Wait,
        Some((tag, resume)),
    );
    let mut skip = resume;
    let mut failure: Option<String> = None;
    let result = replay(settings, path, &mut |r| {
        if stopped() {
            failure = Some("interrupted".to_owned());
            return Err(std::io::Error::other("interrupted"));
        }
        if skip > 0 {
            skip -= 1;
            return Ok(());
        }
        metrics.observe_record(&r);
        batcher.push(r).map_err(|e| {
            let text = error_chain(&e);
            failure = Some(text.clone());
            std::io::Error::other(text)
        })
    });
    let stats = match result {
        Ok(stats) => stats,
        Err(e) => {
            let interrupted = stopped();
            if !interrupted {
                // What was read is spooled (and marked): a re-run goes on from there.
                if let Err(e) = batcher.flush() {
                    eprintln!("error: {}", error_chain(&e));
                }
            }
            match failure {
                Some(f) => eprintln!("error: {}: {f}", path.display()),
                None => eprintln!("error: {}: {}", path.display(), error_chain(&e)),
            }
            let deadline = std::time::Instant::now() + ship_settings.shutdown_grace;
            shipper.wait_drained(Some(deadline), &|| false);
            if interrupted {
                eprintln!("run the same command again to resume");
            }
            let _ = stop_shipper(shipper);
            return ExitCode::FAILURE;
        }
    };
    let flushed = batcher.flush();
    let (batches, spooled, dropped) = (batcher.batches, batcher.records, batcher.dropped);
    let handled = batcher.handled().unwrap_or(resume);
    drop(batcher);
    if let Err(e) = flushed.and_then(|()| shipper.finish_input(tag, handled)) {
        eprintln!("error: {}", error_chain(&e));
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
        let deadline = std::time::Instant::now() + ship_settings.shutdown_grace;
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
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    let threads = match capture::start(settings, stop, tx) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            let _ = stop_shipper(shipper);
            return ExitCode::FAILURE;
        }
    };
    metrics.set_capture(threads.stats());
    eprintln!(
        "flowlog-agent: capturing, {}-second intervals, records to {} via the spool {}; \
         SIGINT/SIGTERM (Ctrl-C) spools the open interval, delivers what it can within {} and \
         exits",
        settings.interval_secs,
        ship_settings
            .endpoints
            .iter()
            .map(|e| e.url.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        ship_settings.spool.dir.display(),
        humantime::format_duration(ship_settings.shutdown_grace)
    );
    let fill = |r: &mut FlowRecord| {
        prepare(settings, r);
    };
    let never = || false;
    let mut batcher = Batcher::new(&shipper, settings, &fill, &never, Overflow::Replace, None);
    let mut status = ExitCode::SUCCESS;
    let spool_failed = |e: ship::ShipError, status: &mut ExitCode| {
        eprintln!("error: {}", error_chain(&e));
        *status = ExitCode::FAILURE;
    };
    let idle = std::time::Duration::from_millis(500);
    loop {
        match rx.recv_timeout(idle) {
            Ok((_interface, records)) => {
                for mut r in records {
                    if prepare(settings, &mut r) {
                        metrics.observe_record(&r);
                        if let Err(e) = batcher.push(r) {
                            spool_failed(e, &mut status);
                        }
                    } else {
                        metrics.records_filtered.inc();
                    }
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = batcher.flush_if_idle(idle) {
                    spool_failed(e, &mut status);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    threads.join();
    if let Err(e) = batcher.flush() {
        spool_failed(e, &mut status);
    }
    drop(batcher);
    let deadline = std::time::Instant::now() + ship_settings.shutdown_grace;
    let left = shipper.wait_drained(Some(deadline), &|| false);
    if left.batches == 0 {
        eprintln!("every spooled record is acknowledged by the aggregator");
    }
    if let Err(code) = stop_shipper(shipper) {
        return code;
    }
    status
}
