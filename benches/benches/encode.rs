//! Encoder throughput: {AWS default format, v5 format} × {text + gzip level 6, Parquet
//! (default options)}, 1,000,000 records per iteration, single-threaded.
//!
//! Records are generated once per format, outside the timed part, by
//! [`flowlog_benches`]. Each iteration encodes all of them into a reused `Vec<u8>` that
//! is already big enough (and faulted in) after the warm-up iteration, so the numbers are
//! encoder time only.
//!
//! Run with `cargo bench -p flowlog-benches` (about 3 minutes on 2 cores); filter with
//! e.g. `cargo bench -p flowlog-benches -- v5/parquet`.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use flowlog_benches::{V5_FORMAT, default_format_records, v5_records};
use flowlog_formats::parquet::{ParquetOptions, ParquetWriter};
use flowlog_formats::text::{DEFAULT_GZIP_LEVEL, GzipTextWriter};
use flowlog_formats::{FlowRecord, LogFormat};

const RECORDS: usize = 1_000_000;
/// Records when the bench runs as a test (`cargo test --all-targets`, no `--bench`
/// argument): criterion then runs every routine once, unoptimised.
const TEST_RECORDS: usize = 10_000;
const SEED: u64 = 0x00F1_0E10_6000_0001;
const SAMPLES: usize = 10;

fn encode_text_gzip(buf: Vec<u8>, format: &LogFormat, records: &[FlowRecord]) -> Vec<u8> {
    let mut w = GzipTextWriter::new(buf, format.clone(), DEFAULT_GZIP_LEVEL).unwrap();
    for r in records {
        w.write_record(r).unwrap();
    }
    w.finish().unwrap()
}

fn encode_parquet(buf: Vec<u8>, format: &LogFormat, records: &[FlowRecord]) -> Vec<u8> {
    let mut w = ParquetWriter::new(buf, format.clone(), &ParquetOptions::default()).unwrap();
    for r in records {
        w.write_record(r).unwrap();
    }
    w.finish().unwrap()
}

type Encoder = fn(Vec<u8>, &LogFormat, &[FlowRecord]) -> Vec<u8>;

fn bench_format(c: &mut Criterion, name: &str, format: &LogFormat, records: &[FlowRecord]) {
    let mut group = c.benchmark_group(name);
    group
        .throughput(Throughput::Elements(records.len() as u64))
        .sample_size(SAMPLES)
        // One iteration takes 2–5 s on the reference machine: flat sampling with one
        // iteration per sample (criterion warns that it cannot complete 10 samples in the
        // measurement time; that is expected), 11 iterations per benchmark in total.
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    let encoders: [(&str, Encoder); 2] = [
        ("text_gzip6", encode_text_gzip),
        ("parquet", encode_parquet),
    ];
    for (id, encode) in encoders {
        // The output buffer is reused: after the warm-up iteration it is big enough and
        // its pages are faulted in, so iterations time the encoder only.
        let mut buf: Vec<u8> = Vec::new();
        group.bench_function(id, |b| {
            b.iter(|| {
                let mut out = encode(std::mem::take(&mut buf), format, black_box(records));
                black_box(out.len());
                out.clear();
                buf = out;
            });
        });
    }
    group.finish();
}

fn encode_benches(c: &mut Criterion) {
    let n = if std::env::args().any(|a| a == "--bench") {
        RECORDS
    } else {
        TEST_RECORDS
    };
    {
        let records = default_format_records(n, SEED);
        bench_format(c, "default", &LogFormat::aws_default(), &records);
    }
    {
        let records = v5_records(n, SEED);
        bench_format(c, "v5", &LogFormat::parse(V5_FORMAT).unwrap(), &records);
    }
}

criterion_group!(benches, encode_benches);
criterion_main!(benches);
