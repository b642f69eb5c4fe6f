//! `flowlog-aggregator convert`: rewrites existing flow log files in another format
//! (text ↔ Parquet, or a custom format down to the default one).
//!
//! All or nothing: every output is written to a temporary file beside its destination and
//! renamed into place only once every input converted cleanly. With `skip_bad_lines`,
//! malformed lines are counted, reported and left out instead.

use crate::config::OutputFormat;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use flowlog_formats::LogFormat;
use flowlog_formats::input::{InputError, RecordSource};
use flowlog_formats::parquet::{ParquetError, ParquetOptions, ParquetWriter};
use flowlog_formats::text::{GzipTextWriter, TextWriter};
use tempfile::NamedTempFile;

/// How many bad lines are listed one by one in an error or report; the rest are counted.
pub const LISTED_BAD_LINES: usize = 20;

/// Where a conversion or an import reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A file.
    Path(PathBuf),
    /// Standard input (`-`).
    Stdin,
}

impl Input {
    /// Parses a command-line argument: `-` is stdin.
    pub fn from_arg(arg: &str) -> Self {
        if arg == "-" {
            Input::Stdin
        } else {
            Input::Path(PathBuf::from(arg))
        }
    }

    /// Returns the input's name for messages (`<stdin>` for standard input).
    pub fn name(&self) -> String {
        match self {
            Input::Path(p) => p.display().to_string(),
            Input::Stdin => "<stdin>".to_owned(),
        }
    }

    /// Opens the input; `headerless` gives the format of text without a header line.
    pub fn open(&self, headerless: Option<LogFormat>) -> Result<RecordSource, InputError> {
        match self {
            Input::Path(p) => RecordSource::open_path(p, headerless),
            Input::Stdin => RecordSource::from_reader(io::stdin(), headerless),
        }
    }
}

/// Settings of one `convert` run.
#[derive(Debug, Clone)]
pub struct ConvertSettings {
    /// Output encoding.
    pub output_format: OutputFormat,
    /// Fields of the output; `None` keeps each input's own fields and order.
    pub log_format: Option<LogFormat>,
    /// Count and leave out malformed lines instead of failing.
    pub skip_bad_lines: bool,
    /// gzip level of text outputs.
    pub gzip_level: u32,
    /// Parquet writer options.
    pub parquet: ParquetOptions,
}

/// A malformed line or row that was left out (or that made the run fail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// The input, as named on the command line.
    pub input: String,
    /// What is wrong, including the line or row number.
    pub message: String,
}

/// What happened to one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertedFile {
    /// The input, as named on the command line.
    pub input: String,
    /// Where its records went (`-` for stdout).
    pub output: String,
    /// Records written.
    pub records: u64,
    /// Malformed lines left out.
    pub skipped: u64,
}

/// The outcome of a successful run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvertReport {
    /// One entry per input, in input order.
    pub files: Vec<ConvertedFile>,
    /// The first [`LISTED_BAD_LINES`] lines left out.
    pub bad_lines: Vec<BadLine>,
}

/// Why a conversion failed. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The arguments do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// An input could not be opened or read.
    #[error("{input}")]
    Input {
        /// The input.
        input: String,
        /// The cause.
        #[source]
        source: InputError,
    },
    /// Malformed lines were found and `--skip-bad-lines` was not given.
    #[error("{} malformed line(s); nothing was written (use --skip-bad-lines to leave them out):\n{}{}",
        .total, list(.listed), more(*.total, .listed.len()))]
    BadLines {
        /// Total number of malformed lines.
        total: u64,
        /// The first few.
        listed: Vec<BadLine>,
    },
    /// An output could not be written.
    #[error("cannot write {path}")]
    Output {
        /// The output path.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Parquet encoding failed.
    #[error("cannot encode {path} as Parquet")]
    Parquet {
        /// The output path.
        path: String,
        /// The cause.
        #[source]
        source: ParquetError,
    },
}

fn list(lines: &[BadLine]) -> String {
    let shown: Vec<String> = lines
        .iter()
        .map(|b| format!("  {}: {}", b.input, b.message))
        .collect();
    shown.join("\n")
}

fn more(total: u64, listed: usize) -> String {
    let rest = total.saturating_sub(listed as u64);
    if rest > 0 {
        format!("\n  … and {rest} more")
    } else {
        String::new()
    }
}

/// Destination of one input.
#[derive(Debug)]
enum Target {
    File(PathBuf),
    Stdout,
}

/// Plans where each input goes: `output` is a file (one input), `-` (stdout, one input),
/// or a directory (several inputs, an existing directory, or a name ending in `/`).
fn plan_targets(
    inputs: &[Input],
    output: &str,
    format: OutputFormat,
) -> Result<Vec<Target>, ConvertError> {
    if inputs.is_empty() {
        return Err(ConvertError::Usage("no input given".into()));
    }
    if output == "-" {
        if inputs.len() > 1 {
            return Err(ConvertError::Usage(
                "--output - (stdout) takes a single input".into(),
            ));
        }
        return Ok(vec![Target::Stdout]);
    }
    let out = PathBuf::from(output);
    let dir_mode = inputs.len() > 1 || out.is_dir() || output.ends_with('/');
    if !dir_mode {
        return Ok(vec![Target::File(out)]);
    }
    let mut targets = Vec::with_capacity(inputs.len());
    let mut seen = std::collections::HashMap::new();
    for input in inputs {
        let name = output_name(input, format);
        if let Some(previous) = seen.insert(name.clone(), input.name()) {
            return Err(ConvertError::Usage(format!(
                "inputs {previous} and {} would both be written to {}",
                input.name(),
                out.join(&name).display()
            )));
        }
        targets.push(Target::File(out.join(name)));
    }
    Ok(targets)
}

/// Returns the output file name for `input` in directory mode: its name with the flow log
/// extension replaced (`x.log.gz` → `x.log.parquet`).
pub fn output_name(input: &Input, format: OutputFormat) -> String {
    let name = match input {
        Input::Path(p) => p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".into()),
        Input::Stdin => "stdin".to_owned(),
    };
    let stem = flow_log_stem(&name);
    let ext = match format {
        OutputFormat::Text => ".log.gz",
        OutputFormat::Parquet => ".log.parquet",
    };
    format!("{stem}{ext}")
}

/// Returns a file name without its flow log extension (`.log.gz`, `.log.parquet`,
/// `.parquet`, `.gz`, `.log`, `.txt`).
pub fn flow_log_stem(name: &str) -> &str {
    [".log.gz", ".log.parquet", ".parquet", ".gz", ".log", ".txt"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .unwrap_or(name)
}

/// Converts every input; see the module docs for the all-or-nothing rule.
pub fn convert(
    inputs: &[Input],
    output: &str,
    settings: &ConvertSettings,
) -> Result<ConvertReport, ConvertError> {
    let targets = plan_targets(inputs, output, settings.output_format)?;
    let out = Path::new(output);
    if output != "-" && (inputs.len() > 1 || output.ends_with('/')) && !out.is_dir() {
        fs::create_dir_all(out).map_err(|source| ConvertError::Output {
            path: output.to_owned(),
            source,
        })?;
    }

    let mut report = ConvertReport::default();
    let mut bad_total = 0u64;
    let mut staged = Vec::with_capacity(targets.len());
    for (input, target) in inputs.iter().zip(&targets) {
        let dest = match target {
            Target::File(p) => p.clone(),
            Target::Stdout => PathBuf::from("-"),
        };
        let staging_dir = match target {
            Target::File(p) => p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            Target::Stdout => std::env::temp_dir(),
        };
        let tmp = NamedTempFile::new_in(&staging_dir).map_err(|source| ConvertError::Output {
            path: dest.display().to_string(),
            source,
        })?;
        let (file, bad) = convert_one(input, &dest, tmp, settings, &mut report)?;
        bad_total += bad;
        staged.push((file, target));
    }

    if bad_total > 0 && !settings.skip_bad_lines {
        return Err(ConvertError::BadLines {
            total: bad_total,
            listed: report.bad_lines,
        });
    }
    for (tmp, target) in staged {
        match target {
            Target::File(path) => {
                tmp.persist(path).map_err(|e| ConvertError::Output {
                    path: path.display().to_string(),
                    source: e.error,
                })?;
            }
            Target::Stdout => {
                let mut file = tmp.reopen().map_err(|source| ConvertError::Output {
                    path: "-".into(),
                    source,
                })?;
                let stdout = io::stdout();
                let mut lock = stdout.lock();
                io::copy(&mut file, &mut lock)
                    .and_then(|_| lock.flush())
                    .map_err(|source| ConvertError::Output {
                        path: "-".into(),
                        source,
                    })?;
            }
        }
    }
    Ok(report)
}

enum Sink {
    Plain(TextWriter<BufWriter<File>>),
    Gzip(Box<GzipTextWriter<BufWriter<File>>>),
    Parquet(Box<ParquetWriter<BufWriter<File>>>),
}

fn convert_one(
    input: &Input,
    dest: &Path,
    tmp: NamedTempFile,
    settings: &ConvertSettings,
    report: &mut ConvertReport,
) -> Result<(NamedTempFile, u64), ConvertError> {
    let input_name = input.name();
    let dest_name = dest.display().to_string();
    let input_err = |source| ConvertError::Input {
        input: input_name.clone(),
        source,
    };
    let out_err = |source| ConvertError::Output {
        path: dest_name.clone(),
        source,
    };
    let pq_err = |source| ConvertError::Parquet {
        path: dest_name.clone(),
        source,
    };

    let source = input.open(None).map_err(input_err)?;
    let format = settings
        .log_format
        .clone()
        .unwrap_or_else(|| source.format().clone());

    let file = tmp.as_file().try_clone().map_err(out_err)?;
    let buffered = BufWriter::with_capacity(256 * 1024, file);
    let gzip = dest_name.ends_with(".gz");
    let mut sink = match settings.output_format {
        OutputFormat::Text if gzip => Sink::Gzip(Box::new(
            GzipTextWriter::new(buffered, format, settings.gzip_level).map_err(out_err)?,
        )),
        OutputFormat::Text => Sink::Plain(TextWriter::new(buffered, format).map_err(out_err)?),
        OutputFormat::Parquet => Sink::Parquet(Box::new(
            ParquetWriter::new(buffered, format, &settings.parquet).map_err(pq_err)?,
        )),
    };

    let (mut records, mut bad) = (0u64, 0u64);
    for item in source {
        match item {
            Ok(record) => {
                match &mut sink {
                    Sink::Plain(w) => w.write_record(&record).map_err(out_err)?,
                    Sink::Gzip(w) => w.write_record(&record).map_err(out_err)?,
                    Sink::Parquet(w) => w.write_record(&record).map_err(pq_err)?,
                }
                records += 1;
            }
            Err(e) if e.is_record_error() => {
                bad += 1;
                if report.bad_lines.len() < LISTED_BAD_LINES {
                    report.bad_lines.push(BadLine {
                        input: input_name.clone(),
                        message: e.to_string(),
                    });
                }
            }
            Err(e) => return Err(input_err(e)),
        }
    }
    let buffered = match sink {
        Sink::Plain(w) => w.finish().map_err(out_err)?,
        Sink::Gzip(w) => w.finish().map_err(out_err)?,
        Sink::Parquet(w) => w.finish().map_err(pq_err)?,
    };
    buffered
        .into_inner()
        .map_err(|e| out_err(e.into_error()))?
        .sync_all()
        .map_err(out_err)?;
    report.files.push(ConvertedFile {
        input: input_name.clone(),
        output: dest_name.clone(),
        records,
        skipped: bad,
    });
    Ok((tmp, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_swap_extensions() {
        let p = |s: &str| Input::Path(PathBuf::from(s));
        assert_eq!(
            output_name(
                &p("a/x_20180620T1620Z_fe123456.log.gz"),
                OutputFormat::Parquet
            ),
            "x_20180620T1620Z_fe123456.log.parquet"
        );
        assert_eq!(
            output_name(&p("x.log.parquet"), OutputFormat::Text),
            "x.log.gz"
        );
        assert_eq!(
            output_name(&p("flows.txt"), OutputFormat::Text),
            "flows.log.gz"
        );
        assert_eq!(
            output_name(&Input::Stdin, OutputFormat::Parquet),
            "stdin.log.parquet"
        );
    }

    #[test]
    fn usage_errors() {
        let two = [Input::from_arg("a/x.log.gz"), Input::from_arg("b/x.log.gz")];
        let e = plan_targets(&two, "out", OutputFormat::Text).unwrap_err();
        assert!(e.to_string().contains("would both be written to"), "{e}");
        assert!(plan_targets(&two, "-", OutputFormat::Text).is_err());
        assert!(plan_targets(&[], "out", OutputFormat::Text).is_err());
    }
}
