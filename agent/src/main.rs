//! Command-line entry point of `flowlog-agent`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use flowlog_agent::capture;
use flowlog_agent::config::{self, AgentSettings};
use flowlog_agent::replay::{prepare, replay};
use flowlog_formats::text::TextWriter;

/// Exit code for invalid usage (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

/// flowlog host agent: turns the packets of this host's interfaces into VPC flow log records.
///
/// Built so far: `--stdout` output, from live capture on the configured interfaces (default:
/// every up, non-loopback interface; needs CAP_NET_RAW) or from `--replay FILE` (pcap or
/// pcapng, packet times as the clock). SIGINT/SIGTERM emit the current interval and exit.
/// Standalone output to files and delivery to the aggregator are not built yet.
#[derive(Debug, Parser)]
#[command(name = "flowlog-agent", version, about, long_about)]
struct Cli {
    /// The TOML config file ([flow_log], [output], [[interface]]).
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Read packets from a pcap/pcapng file instead of capturing.
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,
    /// Print records to stdout (header line first) in the configured format.
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
    if !cli.stdout {
        eprintln!(
            "error: standalone output and delivery to the aggregator are not built yet; use --stdout"
        );
        return ExitCode::from(EX_USAGE);
    }
    let Some(path) = cli.replay else {
        return live(&settings);
    };
    let stdout = std::io::stdout();
    let mut writer = match TextWriter::new(
        std::io::BufWriter::new(stdout.lock()),
        settings.log_format.clone(),
    ) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: writing to stdout failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = replay(&settings, &path, &mut |r| writer.write_record(r));
    let flushed = writer.finish().and_then(|mut w| w.flush());
    match (result, flushed) {
        (Ok(stats), Ok(())) => {
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
            ExitCode::SUCCESS
        }
        (Err(e), _) => {
            eprintln!("error: {}: {e}", path.display());
            ExitCode::FAILURE
        }
        (_, Err(e)) => {
            eprintln!("error: writing to stdout failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Captures until SIGINT/SIGTERM, printing records as their intervals close.
fn live(settings: &AgentSettings) -> ExitCode {
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
            return ExitCode::FAILURE;
        }
    };
    let stdout = std::io::stdout();
    let mut writer = match TextWriter::new(
        std::io::LineWriter::new(stdout.lock()),
        settings.log_format.clone(),
    ) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: writing to stdout failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut status = ExitCode::SUCCESS;
    for (_interface, records) in rx {
        for mut r in records {
            if prepare(settings, &mut r) && writer.write_record(&r).is_err() {
                status = ExitCode::FAILURE;
            }
        }
        if writer.flush_buffer().is_err() {
            status = ExitCode::FAILURE;
        }
    }
    for t in threads {
        let _ = t.join();
    }
    if writer.finish().and_then(|mut w| w.flush()).is_err() {
        status = ExitCode::FAILURE;
    }
    status
}
