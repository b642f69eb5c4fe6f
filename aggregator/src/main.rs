//! Command-line entry point of `flowlog-aggregator`.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use flowlog_aggregator::config::OutputFormat;
use flowlog_aggregator::config::{self, LoadOptions, Settings};
use flowlog_aggregator::convert::{self, ConvertSettings, Input};
use flowlog_aggregator::import;
use flowlog_aggregator::serve;
use flowlog_formats::LogFormat;
use flowlog_formats::parquet::ParquetOptions;
use flowlog_formats::text::DEFAULT_GZIP_LEVEL;
use flowlog_publish::pipeline::Windows;
use flowlog_publish::telemetry::{self, Metrics};
use flowlog_publish::{Finished, Publisher, PublisherOptions, Wait};

/// Exit code for invalid usage (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

/// flowlog's central service: receives flow records and publishes VPC-flow-log-compatible
/// files; also converts existing flow log files.
#[derive(Debug, Parser)]
#[command(name = "flowlog-aggregator", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert flow log files between text (.log.gz / plain) and Parquet, or to another
    /// field format.
    #[command(after_help = CONVERT_EXAMPLES)]
    Convert(ConvertArgs),
    /// Publish existing flow log files through the pipeline (windows, size cap, keys, sink)
    /// exactly once; re-running the same command resumes an interrupted import.
    Import(ImportArgs),
    /// Receive batches from agents over gRPC (TLS, bearer tokens) and publish them exactly
    /// once; SIGTERM/SIGINT stops it gracefully, SIGHUP reloads the tokens file.
    Serve(ServeArgs),
    /// Validate a config file (and the files [listen] names): exit 0 if it is usable, 64
    /// with every problem listed if not.
    CheckConfig(ConfigArg),
    /// Print the Athena `CREATE EXTERNAL TABLE` (with partition projection) for the
    /// configured output, optionally its partitions, and write the named queries.
    #[command(after_help = ATHENA_EXAMPLES)]
    AthenaDdl(AthenaArgs),
}

const ATHENA_EXAMPLES: &str = "\
Examples:
  flowlog-aggregator athena-ddl --config /etc/flowlog/aggregator.toml > table.sql
  flowlog-aggregator athena-ddl --config aggregator.toml --queries ./queries
  flowlog-aggregator athena-ddl --config aggregator.toml --no-projection --partitions   # Spark, Hive

The table's accounts, regions and first day come from [athena] or, when unset, from the
folders present in the output. Exit status: 0 ok, 64 bad config or query selection,
1 the output could not be listed or a file not written.";

#[derive(Debug, Args)]
struct AthenaArgs {
    /// The TOML config file ([flow_log], [output], [sink], optional [athena]).
    #[arg(long, short, value_name = "FILE")]
    config: std::path::PathBuf,
    /// Also print `ALTER TABLE … ADD PARTITION` for every partition in the output, for
    /// engines without partition projection.
    #[arg(long)]
    partitions: bool,
    /// Leave out the partition projection properties (Athena-only).
    #[arg(long)]
    no_projection: bool,
    /// Write the named queries (.sql files) into this directory.
    #[arg(long, value_name = "DIR")]
    queries: Option<std::path::PathBuf>,
    /// Only this query (repeatable); fails if the format lacks a field it needs.
    /// Without it every query the format allows is written, and the others are listed.
    #[arg(long = "query", value_name = "NAME")]
    query: Vec<String>,
    /// Table name instead of athena.table.
    #[arg(long, value_name = "NAME")]
    table: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The TOML config file ([flow_log], [output], [sink], [state], [service], [listen]).
    #[arg(long, short, value_name = "FILE")]
    config: std::path::PathBuf,
    /// Validate the config and the files it names, and exit (0 = usable, 64 = not).
    #[arg(long)]
    check_config: bool,
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// The TOML config file.
    #[arg(long, short, value_name = "FILE")]
    config: std::path::PathBuf,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// The TOML config file ([flow_log], [output], [sink], [state], [service]).
    #[arg(long, short, value_name = "FILE")]
    config: std::path::PathBuf,
    /// Validate the config and exit (0 = usable, 64 = not).
    #[arg(long)]
    check_config: bool,
    /// Format of header-less text inputs (e.g. CloudWatch Logs exports), as
    /// `${field} ${field} …`; inputs with a header line are read by their header.
    #[arg(long, value_name = "FORMAT")]
    input_format: Option<String>,
    /// Input files (`.log.gz`, `.log.parquet`, plain text); `-` is stdin.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<String>,
}

const CONVERT_EXAMPLES: &str = "\
Examples:
  # text to Parquet, keeping the file's own fields
  flowlog-aggregator convert --output-format parquet \\
      123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20180620T1620Z_fe123456.log.gz --output out.log.parquet
  # a custom-format file down to the AWS default format, plain text on stdout
  flowlog-aggregator convert --output-format text \\
      --log-format '${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status}' \\
      custom.log.gz --output -
  # many files into a directory (names keep their stem, extension follows the format)
  flowlog-aggregator convert --output-format parquet logs/*.log.gz --output parquet/";

#[derive(Debug, Args)]
struct ConvertArgs {
    /// Output encoding.
    #[arg(long, value_enum)]
    output_format: OutputFormat,
    /// Fields of the output as `${field} ${field} …`; default: each input's own fields, in
    /// its order. Fields the input lacks are written as `-` (null in Parquet).
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Count and leave out malformed lines instead of failing (without it, one bad line
    /// fails the run and nothing is written).
    #[arg(long)]
    skip_bad_lines: bool,
    /// gzip level (0-9) of text outputs.
    #[arg(long, default_value_t = DEFAULT_GZIP_LEVEL, value_parser = clap::value_parser!(u32).range(0..=9))]
    gzip_level: u32,
    /// Use dictionary encoding in Parquet outputs (smaller for repetitive columns, but the
    /// `parquet` Python package used by flowlogs-reader cannot read it).
    #[arg(long)]
    parquet_dictionary: bool,
    /// Input files: `.log.gz`, `.log.parquet` or plain text with a header line; `-` is stdin.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<String>,
    /// Output file, `-` for stdout, or a directory (required with several inputs). Text is
    /// gzip'd when the file name ends in `.gz` and always inside a directory.
    #[arg(long, short)]
    output: String,
}

/// Keeps glibc from moving large, short-lived buffers (record batches, per-file gzip
/// state) onto the heap, where freeing them in a different order than they were made
/// fragments it: measured on a 5M-record import, peak RSS then grew with the input
/// (134 → 189 MiB and rising); with a fixed mmap threshold it stays flat (~115 MiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters. It is called in main right after
    // argument parsing (which starts no thread), before any other thread exists, and its
    // failure (return 0) leaves the defaults.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Not for serve: its memory is bounded by [listen] limits, and with a fixed mmap
    // threshold every push's large buffers (decompressed message, decoded records) were
    // mapped and faulted in afresh: about a fifth of the ingest threads' time in profiles.
    if !matches!(cli.command, Command::Serve(_)) {
        tune_allocator();
    }
    match cli.command {
        Command::Convert(args) => run_convert(args),
        Command::Import(args) => run_import(args),
        Command::Serve(args) => run_serve(args),
        Command::AthenaDdl(args) => run_athena_ddl(args),
        Command::CheckConfig(args) => match config::load_with(
            &args.config,
            LoadOptions {
                require_listen: false,
                check_files: Some(serve::check_listen_files),
                ignore_unknown: false,
            },
        ) {
            Ok(_) => {
                eprintln!("{}: ok", args.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EX_USAGE)
            }
        },
    }
}

/// Loads the config or explains why not (exit 64).
fn load_config(path: &std::path::Path) -> Result<Settings, ExitCode> {
    config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EX_USAGE)
    })
}

fn run_athena_ddl(args: AthenaArgs) -> ExitCode {
    use flowlog_aggregator::athena::{self, AthenaError};
    // The agent's standalone config has the same sections plus the agent's own: read what
    // the table needs and say what was passed over.
    let settings = match config::load(&args.config) {
        Ok(s) => s,
        Err(strict) => {
            let unknown = |p: &config::Problem| {
                p.message == "unknown key" || p.message.starts_with("unknown section")
            };
            let lenient = LoadOptions {
                ignore_unknown: true,
                ..LoadOptions::default()
            };
            match config::load_with(&args.config, lenient) {
                Ok(s) if strict.problems.iter().all(unknown) => {
                    let skipped: Vec<&str> =
                        strict.problems.iter().map(|p| p.key.as_str()).collect();
                    eprintln!(
                        "note: {}: not used by athena-ddl: {}",
                        args.config.display(),
                        skipped.join(", ")
                    );
                    s
                }
                _ => {
                    eprintln!("error: {strict}");
                    return ExitCode::from(EX_USAGE);
                }
            }
        }
    };
    if let Some(table) = &args.table
        && let Err(e) = config::validate_athena_name(table)
    {
        eprintln!("error: --table: {e}");
        return ExitCode::from(EX_USAGE);
    }
    let request = athena::Request {
        partitions: args.partitions,
        no_projection: args.no_projection,
        queries_dir: args.queries,
        queries: args.query,
        table: args.table,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(athena::generate(&settings, &request)) {
        Ok(output) => {
            print!("{}", output.sql);
            for note in &output.notes {
                eprintln!("note: {note}");
            }
            for path in &output.written {
                eprintln!("wrote {}", path.display());
            }
            for (query, missing) in &output.skipped {
                eprintln!(
                    "not written: {} (the format lacks {})",
                    query.file_name(),
                    missing.join(", ")
                );
            }
            ExitCode::SUCCESS
        }
        Err(e @ (AthenaError::UnknownQuery(_) | AthenaError::MissingFields { .. })) => {
            eprintln!("error: {e}");
            ExitCode::from(EX_USAGE)
        }
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::new(e));
            ExitCode::FAILURE
        }
    }
}

fn run_serve(args: ServeArgs) -> ExitCode {
    let settings = match config::load_with(
        &args.config,
        LoadOptions {
            require_listen: true,
            check_files: Some(serve::check_listen_files),
            ignore_unknown: false,
        },
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if args.check_config {
        eprintln!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    if let Err(e) = telemetry::init_tracing(
        settings.publish.service.log_format,
        &settings.publish.service.log_level,
    ) {
        eprintln!("error: {e}");
        return ExitCode::from(EX_USAGE);
    }
    let started = Instant::now();
    match serve::run(&settings) {
        Ok(summary) => {
            let stats = summary.stats;
            eprintln!(
                "served {:.0}s: {} records written, {} replayed from an earlier run; published {} file(s), {} records, {} bytes{}",
                started.elapsed().as_secs_f64(),
                stats.records_in,
                stats.records_replayed,
                stats.files_published,
                stats.records_published,
                stats.bytes_published,
                if summary.published {
                    ""
                } else {
                    "; the rest is uploaded at the next start"
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let e = anyhow::Error::new(e);
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_import(args: ImportArgs) -> ExitCode {
    let settings = match load_config(&args.config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if args.check_config {
        eprintln!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    let headerless = match args
        .input_format
        .as_deref()
        .map(LogFormat::parse)
        .transpose()
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: --input-format: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if let Err(e) = telemetry::init_tracing(
        settings.publish.service.log_format,
        &settings.publish.service.log_level,
    ) {
        eprintln!("error: {e}");
        return ExitCode::from(EX_USAGE);
    }
    match import_main(&settings, &args.inputs, headerless.as_ref()) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn import_main(
    settings: &Settings,
    inputs: &[String],
    headerless: Option<&LogFormat>,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let publisher = Publisher::start(
        &settings.publish,
        PublisherOptions {
            windows: Windows::ByInput,
            runtime_threads: Some(2),
            thread_name: "import",
            metrics: Metrics::new_with(|_| {}),
        },
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        let deadline = publisher.pipeline().shutdown_deadline();
        let grace = settings.publish.service.shutdown_grace;
        publisher.runtime().spawn(async move {
            telemetry::shutdown_signal().await;
            // From here the whole shutdown (sealing and uploading) has `grace`; what does
            // not make it stays in the state directory for the next run.
            deadline.set(grace);
            tracing::info!(
                grace = %humantime::format_duration(grace),
                "signal received: sealing and uploading what can be within shutdown_grace"
            );
            stop.store(true, Ordering::Relaxed);
        });
    }
    let inputs: Vec<Input> = inputs.iter().map(|a| Input::from_arg(a)).collect();
    let summary = import::import(publisher.pipeline(), settings, &inputs, headerless, &stop)?;
    let wait = if summary.interrupted || stop.load(Ordering::Relaxed) {
        Wait::Grace(settings.publish.service.shutdown_grace)
    } else {
        Wait::UntilPublished
    };
    let destination = publisher.describe();
    let Finished { stats, published } = publisher.finish(wait)?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "imported {} records from {} input(s) in {:.1}s ({:.0} records/s); {} already imported, {} records resumed, {} malformed skipped, {} unpublishable quarantined{}",
        summary.records,
        summary.inputs_read,
        secs,
        summary.records as f64 / secs.max(0.001),
        summary.inputs_already_done,
        summary.records_resumed,
        summary.bad_records,
        summary.quarantined,
        if summary.quarantined > 0 {
            format!(
                " (in {})",
                settings
                    .publish
                    .state
                    .dir
                    .join(flowlog_publish::quarantine::DIR)
                    .display()
            )
        } else {
            String::new()
        },
    );
    eprintln!(
        "published {} file(s), {} records, {} bytes to {}{}",
        stats.files_published,
        stats.records_published,
        stats.bytes_published,
        destination,
        if stats.records_replayed > 0 {
            format!(
                " (including {} records recovered from an earlier run)",
                stats.records_replayed
            )
        } else {
            String::new()
        }
    );
    if summary.inputs_read == 0 && summary.records == 0 && stats.files_published == 0 {
        eprintln!("nothing new to publish");
    }
    if !published {
        eprintln!(
            "error: some files are still staged in {}; they are uploaded at the next start",
            settings.publish.state.dir.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    if summary.interrupted {
        eprintln!("interrupted: progress is kept; run the same command again to resume");
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

fn run_convert(args: ConvertArgs) -> ExitCode {
    let log_format = match args.log_format.as_deref().map(LogFormat::parse).transpose() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: --log-format: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let settings = ConvertSettings {
        output_format: args.output_format,
        log_format,
        skip_bad_lines: args.skip_bad_lines,
        gzip_level: args.gzip_level,
        parquet: ParquetOptions {
            dictionary: args.parquet_dictionary,
            ..ParquetOptions::default()
        },
    };
    let inputs: Vec<Input> = args.inputs.iter().map(|a| Input::from_arg(a)).collect();
    match convert::convert(&inputs, &args.output, &settings).context("convert failed") {
        Ok(report) => {
            for f in &report.files {
                let skipped = if f.skipped > 0 {
                    format!(" ({} malformed lines left out)", f.skipped)
                } else {
                    String::new()
                };
                eprintln!(
                    "{} -> {}: {} records{skipped}",
                    f.input, f.output, f.records
                );
            }
            for bad in &report.bad_lines {
                eprintln!("warning: skipped {}: {}", bad.input, bad.message);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let usage = matches!(
                e.downcast_ref::<convert::ConvertError>(),
                Some(convert::ConvertError::Usage(_))
            );
            eprintln!("error: {e:#}");
            if usage {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
