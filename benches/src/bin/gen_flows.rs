//! Writes N realistic default-format records as a flow log text file (header first), in
//! time order, streaming (memory stays flat whatever N is).
//!
//! `gen_flows --records 10000000 --out flows.log [--seed 1]`

use std::io::{BufWriter, Write};
use std::process::ExitCode;

use flowlog_benches::{RECORDS_PER_WINDOW, default_format_records};
use flowlog_formats::LogFormat;
use flowlog_formats::text::TextWriter;

const CHUNK: usize = 100_000;

fn main() -> ExitCode {
    let mut records = 1_000_000usize;
    let mut out = None;
    let mut seed = 1u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--records", Some(v)) => records = v.parse().unwrap_or(records),
            ("--out", Some(v)) => out = Some(v),
            ("--seed", Some(v)) => seed = v.parse().unwrap_or(seed),
            _ => {
                eprintln!("usage: gen_flows --records N --out FILE [--seed S]");
                return ExitCode::from(64);
            }
        }
    }
    let Some(out) = out else {
        eprintln!("usage: gen_flows --records N --out FILE [--seed S]");
        return ExitCode::from(64);
    };
    match generate(records, &out, seed) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {out}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn generate(records: usize, out: &str, seed: u64) -> std::io::Result<()> {
    let file = BufWriter::with_capacity(1 << 20, std::fs::File::create(out)?);
    let mut w = TextWriter::new(file, LogFormat::aws_default())?;
    // Each chunk covers CHUNK / RECORDS_PER_WINDOW minutes; later chunks are shifted so the
    // whole file stays in time order.
    let chunk_secs = (CHUNK / RECORDS_PER_WINDOW) as u64 * 60;
    let mut written = 0usize;
    let mut chunk = 0u64;
    while written < records {
        let n = CHUNK.min(records - written);
        for mut r in default_format_records(n, seed.wrapping_add(chunk)) {
            let shift = chunk * chunk_secs;
            r.start = r.start.map(|t| t + shift);
            r.end = r.end.map(|t| t + shift);
            w.write_record(&r)?;
        }
        written += n;
        chunk += 1;
    }
    w.finish()?.flush()
}
