//! Property tests: arbitrary records in arbitrary formats survive the text encoder (plain
//! and gzip'd) and the Parquet encoder unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::IpAddr;

use flowlog_formats::parquet::{ParquetOptions, ParquetReader, ParquetWriter};
use flowlog_formats::text::{GzipTextWriter, TextReader};
use flowlog_formats::{FieldId, FlowRecord, LogFormat};
use proptest::prelude::*;
use proptest::sample::subsequence;

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9:/._=+-]{0,40}".prop_filter("'-' alone means absent", |s| s != "-")
}

/// Sets `field` of `record` to a random value that fits it.
fn arb_value(field: FieldId) -> BoxedStrategy<Option<String>> {
    let value: BoxedStrategy<String> = match field {
        FieldId::SrcAddr | FieldId::DstAddr | FieldId::PktSrcAddr | FieldId::PktDstAddr => {
            any::<IpAddr>().prop_map(|ip| ip.to_string()).boxed()
        }
        FieldId::SrcPort | FieldId::DstPort | FieldId::TcpFlags => {
            any::<u16>().prop_map(|v| v.to_string()).boxed()
        }
        FieldId::Protocol | FieldId::TrafficPath | FieldId::EncryptionStatus => {
            any::<u8>().prop_map(|v| v.to_string()).boxed()
        }
        FieldId::Packets | FieldId::Bytes | FieldId::Start | FieldId::End => {
            (0..=i64::MAX).prop_map(|v| v.to_string()).boxed()
        }
        FieldId::Action => prop_oneof![Just("ACCEPT"), Just("REJECT")]
            .prop_map(String::from)
            .boxed(),
        FieldId::LogStatus => prop_oneof![Just("OK"), Just("NODATA"), Just("SKIPDATA")]
            .prop_map(String::from)
            .boxed(),
        FieldId::Type => prop_oneof![Just("IPv4"), Just("IPv6"), Just("EFA")]
            .prop_map(String::from)
            .boxed(),
        FieldId::FlowDirection => prop_oneof![Just("ingress"), Just("egress")]
            .prop_map(String::from)
            .boxed(),
        _ => token().boxed(),
    };
    proptest::option::weighted(0.8, value).boxed()
}

fn arb_format_and_records() -> impl Strategy<Value = (LogFormat, Vec<FlowRecord>)> {
    subsequence(FieldId::ALL.to_vec(), 1..=FieldId::ALL.len())
        .prop_shuffle()
        .prop_flat_map(|fields| {
            let format =
                LogFormat::from_fields(fields.clone()).expect("subsequence has no duplicates");
            let record = fields
                .iter()
                .copied()
                .filter(|f| *f != FieldId::Version)
                .map(|f| arb_value(f).prop_map(move |v| (f, v)))
                .collect::<Vec<_>>()
                .prop_map(|values| {
                    let mut r = FlowRecord::default();
                    for (field, value) in values {
                        if let Some(v) = value {
                            r.set_str(field, &v)
                                .expect("generated values fit their field");
                        }
                    }
                    r
                });
            (Just(format), proptest::collection::vec(record, 0..40))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn text_and_gzip_round_trip((format, records) in arb_format_and_records()) {
        let mut w = GzipTextWriter::new(Vec::new(), format.clone(), 1).unwrap();
        for r in &records {
            w.write_record(r).unwrap();
        }
        let gz = w.finish().unwrap();
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut text).unwrap();
        let reader = TextReader::with_header(&text[..]).unwrap();
        prop_assert_eq!(reader.format(), &format);
        let back: Vec<FlowRecord> = reader.collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(back, records);
    }

    #[test]
    fn parquet_round_trip((format, records) in arb_format_and_records(), dictionary in any::<bool>()) {
        let options = ParquetOptions { dictionary, ..ParquetOptions::default() };
        let mut w = ParquetWriter::new(Vec::new(), format.clone(), &options).unwrap();
        for r in &records {
            w.write_record(r).unwrap();
        }
        let reader = ParquetReader::new(w.finish().unwrap().into()).unwrap();
        prop_assert_eq!(reader.format(), &format);
        let back: Vec<FlowRecord> = reader.collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(back, records);
    }
}
