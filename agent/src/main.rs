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
use flowlog_formats::FlowRecord;
use flowlog_formats::text::TextWriter;

/// Exit code for invalid usage (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

/// flowlog host agent: turns the packets of this host's interfaces into VPC flow log records.
///
/// Captures on the configured interfaces (default: every up, non-loopback interface; needs
/// CAP_NET_RAW), or reads a pcap/pcapng file with `--replay` (packet times as the clock).
/// Records go to files (standalone mode, the default: `[output]`, `[sink]` and `[state]` as
/// for flowlog-aggregator; `./flowlogs/AWSLogs/...` unless configured otherwise) or to stdout
/// with `--stdout`. SIGINT/SIGTERM close the current interval, seal the open files and exit.
#[derive(Debug, Parser)]
#[command(name = "flowlog-agent", version, about, long_about)]
struct Cli {
    /// The TOML config file ([flow_log], [output], [[interface]], [sink], [state], ...).
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Read packets from a pcap/pcapng file instead of capturing.
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
        eprintln!("{}: ok", cli.config.display());
        return ExitCode::SUCCESS;
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
            Output::Files(p) => p.push(record).map_err(|e| error_chain(&e)),
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
            Output::Files(p) => p.submit(records).map_err(|e| error_chain(&e)),
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
                let summary = p.finish(None).map_err(|e| error_chain(&e))?;
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

#[cfg(feature = "standalone")]
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
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
        eprintln!("error: {}", error_chain(&e));
        ExitCode::FAILURE
    })
}

#[cfg(not(feature = "standalone"))]
fn open_files(_settings: &AgentSettings, _metrics: &AgentMetrics) -> Result<Output, ExitCode> {
    eprintln!(
        "error: this flowlog-agent is built without standalone output (cargo feature \
         `standalone`); use --stdout"
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
