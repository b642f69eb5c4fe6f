//! Command-line entry point of `flowlog-aggregator`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use flowlog_aggregator::convert::{self, ConvertSettings, Input, OutputFormat};
use flowlog_formats::LogFormat;
use flowlog_formats::parquet::ParquetOptions;
use flowlog_formats::text::DEFAULT_GZIP_LEVEL;

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Convert(args) => run_convert(args),
    }
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
