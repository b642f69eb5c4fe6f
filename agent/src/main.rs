//! Command-line entry point of `flowlog-agent`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use flowlog_agent::config;
use flowlog_agent::replay::replay;
use flowlog_formats::text::TextWriter;

/// Exit code for invalid usage (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

/// flowlog host agent: turns the packets of this host's interfaces into VPC flow log records.
///
/// Built so far: `--replay FILE --stdout`, which reads a pcap/pcapng capture (packet times as
/// the clock) and prints the records in the configured format. Live capture, standalone
/// output to files and delivery to the aggregator are not built yet.
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
    let Some(path) = cli.replay else {
        eprintln!("error: live capture is not built yet; use --replay FILE --stdout");
        return ExitCode::from(EX_USAGE);
    };
    if !cli.stdout {
        eprintln!(
            "error: standalone output and delivery to the aggregator are not built yet; use --stdout"
        );
        return ExitCode::from(EX_USAGE);
    }
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
