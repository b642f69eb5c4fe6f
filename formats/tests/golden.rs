//! Golden tests: every example record of the spec (§3) decodes to the expected typed values
//! and re-encodes byte for byte, as text, as gzip'd text, and through Parquet.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::IpAddr;

use flowlog_formats::parquet::{ParquetOptions, ParquetReader, ParquetWriter};
use flowlog_formats::text::{GzipTextWriter, TextReader, TextWriter};
use flowlog_formats::{
    Action, FieldId, FlowDirection, FlowRecord, LogFormat, LogStatus, TrafficType,
};

const DEFAULT_HEADER: &str = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status";

/// Default format: accepted/rejected traffic, NODATA, SKIPDATA, the SG/NACL ping pair and IPv6.
const DEFAULT_ROWS: &str = "\
2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 ACCEPT OK
2 123456789010 eni-1235b8ca123456789 172.31.9.69 172.31.9.12 49761 3389 6 20 4249 1418530010 1418530070 REJECT OK
2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA
2 123456789010 eni-11111111aaaaaaaaa - - - - - - - 1431280876 1431280934 - SKIPDATA
2 123456789010 eni-1235b8ca123456789 203.0.113.12 172.31.16.139 0 0 1 4 336 1432917027 1432917142 ACCEPT OK
2 123456789010 eni-1235b8ca123456789 172.31.16.139 203.0.113.12 0 0 1 4 336 1432917094 1432917142 REJECT OK
2 123456789010 eni-1235b8ca123456789 2001:db8:1234:a100:8d6e:3477:df66:f105 2001:db8:1234:a102:3304:8879:34cf:4071 34892 22 6 54 8855 1477913708 1477913820 ACCEPT OK
";

const TCP_FORMAT: &str = "${version} ${vpc-id} ${subnet-id} ${instance-id} ${interface-id} ${account-id} ${type} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${pkt-srcaddr} ${pkt-dstaddr} ${protocol} ${bytes} ${packets} ${start} ${end} ${action} ${tcp-flags} ${log-status}";

/// v3 TCP flag sequence: the four opening rows as AWS publishes them (SYN 2 / SYN-ACK 18),
/// then rows for the next interval built from the spec's description of it (§3.3: closing
/// rows show FIN 1; a connection opened and closed within one interval shows 3 and 19).
const TCP_ROWS: &str = "\
3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 52.213.180.42 10.0.0.62 43416 5001 52.213.180.42 10.0.0.62 6 568 8 1566848875 1566848933 ACCEPT 2 OK
3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 10.0.0.62 52.213.180.42 5001 43416 10.0.0.62 52.213.180.42 6 376 7 1566848875 1566848933 ACCEPT 18 OK
3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 52.213.180.42 10.0.0.62 43418 5001 52.213.180.42 10.0.0.62 6 100701 70 1566848875 1566848933 ACCEPT 2 OK
3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 10.0.0.62 52.213.180.42 5001 43418 10.0.0.62 52.213.180.42 6 632 12 1566848875 1566848933 ACCEPT 18 OK
3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 52.213.180.42 10.0.0.62 43418 5001 52.213.180.42 10.0.0.62 6 63388 1219 1566848933 1566849113 ACCEPT 1 OK
3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 10.0.0.62 52.213.180.42 5001 43418 10.0.0.62 52.213.180.42 6 23294588 15774 1566848933 1566849113 ACCEPT 1 OK
3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 52.213.180.42 10.0.0.62 43638 5001 52.213.180.42 10.0.0.62 6 1260 17 1566933133 1566933193 ACCEPT 3 OK
3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 10.0.0.62 52.213.180.42 5001 43638 10.0.0.62 52.213.180.42 6 967 14 1566933133 1566933193 ACCEPT 19 OK
";

/// NAT gateway ENI (§3.5): no version field, requester-managed so instance-id is `-`.
const NAT_FORMAT: &str =
    "${instance-id} ${interface-id} ${srcaddr} ${dstaddr} ${pkt-srcaddr} ${pkt-dstaddr}";
const NAT_ROWS: &str = "\
- eni-1235b8ca123456789 10.0.1.5 10.0.0.220 10.0.1.5 203.0.113.5
- eni-1235b8ca123456789 10.0.0.220 203.0.113.5 10.0.0.220 203.0.113.5
- eni-1235b8ca123456789 203.0.113.5 10.0.0.220 203.0.113.5 10.0.0.220
- eni-1235b8ca123456789 10.0.0.220 10.0.1.5 203.0.113.5 10.0.1.5
";

/// The long v5 custom format (§3.6).
const V5_FORMAT: &str = "${version} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${start} ${end} ${type} ${packets} ${bytes} ${account-id} ${vpc-id} ${subnet-id} ${instance-id} ${interface-id} ${region} ${az-id} ${sublocation-type} ${sublocation-id} ${action} ${tcp-flags} ${pkt-srcaddr} ${pkt-dstaddr} ${pkt-src-aws-service} ${pkt-dst-aws-service} ${traffic-path} ${flow-direction} ${log-status}";
const V5_ROWS: &str = "\
5 52.95.128.179 10.0.0.71 80 34210 6 1616729292 1616729349 IPv4 14 15044 123456789012 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-0c50d5961bcb2d47b eni-1235b8ca123456789 ap-southeast-2 apse2-az3 - - ACCEPT 19 52.95.128.179 10.0.0.71 S3 - - ingress OK
5 10.0.0.71 52.95.128.179 34210 80 6 1616729292 1616729349 IPv4 7 471 123456789012 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-0c50d5961bcb2d47b eni-1235b8ca123456789 ap-southeast-2 apse2-az3 - - ACCEPT 3 10.0.0.71 52.95.128.179 - S3 8 egress OK
";

fn file(format: &LogFormat, rows: &str) -> String {
    format!("{}\n{rows}", format.header())
}

fn decode(text: &str) -> (LogFormat, Vec<FlowRecord>) {
    let reader = TextReader::with_header(text.as_bytes()).expect("header");
    let format = reader.format().clone();
    let records = reader
        .collect::<Result<Vec<_>, _>>()
        .expect("every golden line decodes");
    (format, records)
}

fn encode_text(format: &LogFormat, records: &[FlowRecord]) -> String {
    let mut w = TextWriter::new(Vec::new(), format.clone()).expect("writer");
    for r in records {
        w.write_record(r).expect("write");
    }
    String::from_utf8(w.finish().expect("finish")).expect("utf8")
}

/// Decodes, re-encodes as text, as gzip'd text and through Parquet; all must give back the
/// input byte for byte. Returns the decoded records for field checks.
fn assert_round_trips(format_str: Option<&str>, rows: &str) -> Vec<FlowRecord> {
    let format = format_str.map_or_else(LogFormat::aws_default, |f| {
        LogFormat::parse(f).expect("format")
    });
    let original = file(&format, rows);
    let (decoded_format, records) = decode(&original);
    assert_eq!(decoded_format, format);
    assert_eq!(encode_text(&format, &records), original, "text → text");

    let mut gz = GzipTextWriter::new(Vec::new(), format.clone(), 6).expect("gz writer");
    for r in &records {
        gz.write_record(r).expect("write");
    }
    let gz = gz.finish().expect("finish");
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut unzipped)
        .expect("gunzip");
    assert_eq!(unzipped, original, "text → gzip → text");

    let mut pq = ParquetWriter::new(Vec::new(), format.clone(), &ParquetOptions::default())
        .expect("parquet writer");
    for r in &records {
        pq.write_record(r).expect("write");
    }
    let pq = pq.finish().expect("finish");
    let reader = ParquetReader::new(pq.into()).expect("parquet reader");
    assert_eq!(reader.format(), &format);
    let back = reader.collect::<Result<Vec<_>, _>>().expect("rows");
    assert_eq!(back, records);
    assert_eq!(
        encode_text(&format, &back),
        original,
        "text → Parquet → text"
    );
    records
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().expect("ip"))
}

#[test]
fn default_format_examples() {
    let records = assert_round_trips(None, DEFAULT_ROWS);
    assert_eq!(records.len(), 7);
    let ssh = &records[0];
    assert_eq!(ssh.account_id.as_deref(), Some("123456789010"));
    assert_eq!(
        (ssh.srcaddr, ssh.dstport, ssh.protocol),
        (ip("172.31.16.139"), Some(22), Some(6))
    );
    assert_eq!(
        (ssh.packets, ssh.bytes, ssh.start, ssh.end),
        (Some(20), Some(4249), Some(1418530010), Some(1418530070))
    );
    assert_eq!(
        (ssh.action, ssh.log_status),
        (Some(Action::Accept), Some(LogStatus::Ok))
    );
    assert_eq!(records[1].action, Some(Action::Reject));

    let nodata = FlowRecord::no_data(
        Some("123456789010".into()),
        Some("eni-1235b8ca123456789".into()),
        1431280876,
        1431280934,
    );
    assert_eq!(records[2], nodata);
    let skip = FlowRecord::skip_data(
        Some("123456789010".into()),
        Some("eni-11111111aaaaaaaaa".into()),
        1431280876,
        1431280934,
    );
    assert_eq!(records[3], skip);

    assert_eq!(
        (records[4].protocol, records[4].srcport, records[4].dstport),
        (Some(1), Some(0), Some(0))
    );
    assert_eq!(records[5].action, Some(Action::Reject));
    assert_eq!(
        records[6].srcaddr,
        ip("2001:db8:1234:a100:8d6e:3477:df66:f105")
    );
}

#[test]
fn v3_tcp_flag_sequence() {
    let records = assert_round_trips(Some(TCP_FORMAT), TCP_ROWS);
    assert_eq!(LogFormat::parse(TCP_FORMAT).unwrap().version(), 3);
    let flags: Vec<Option<u16>> = records.iter().map(|r| r.tcp_flags).collect();
    let expected = [2, 18, 2, 18, 1, 1, 3, 19].map(Some);
    assert_eq!(flags, expected);
    assert!(
        records
            .iter()
            .all(|r| r.traffic_type == Some(TrafficType::IPv4))
    );
    assert_eq!(records[0].vpc_id.as_deref(), Some("vpc-abcdefab012345678"));
    assert_eq!(records[0].pkt_dstaddr, ip("10.0.0.62"));
    assert_eq!(
        (records[2].bytes, records[2].packets),
        (Some(100701), Some(70))
    );
}

#[test]
fn nat_gateway_example_without_version_field() {
    let records = assert_round_trips(Some(NAT_FORMAT), NAT_ROWS);
    assert!(records.iter().all(|r| r.instance_id.is_none()));
    assert_eq!(records[3].srcaddr, ip("10.0.0.220"));
    assert_eq!(records[3].pkt_srcaddr, ip("203.0.113.5"));
}

#[test]
fn v5_long_custom_format() {
    let records = assert_round_trips(Some(V5_FORMAT), V5_ROWS);
    let format = LogFormat::parse(V5_FORMAT).unwrap();
    assert_eq!((format.len(), format.version()), (29, 5));
    let (ingress, egress) = (&records[0], &records[1]);
    assert_eq!(ingress.flow_direction, Some(FlowDirection::Ingress));
    assert_eq!(ingress.traffic_path, None);
    assert_eq!(ingress.pkt_src_aws_service.as_deref(), Some("S3"));
    assert_eq!(ingress.pkt_dst_aws_service, None);
    assert_eq!(
        (
            ingress.sublocation_type.clone(),
            ingress.sublocation_id.clone()
        ),
        (None, None)
    );
    assert_eq!(ingress.az_id.as_deref(), Some("apse2-az3"));
    assert_eq!(egress.flow_direction, Some(FlowDirection::Egress));
    assert_eq!(egress.traffic_path, Some(8));
    assert_eq!(egress.tcp_flags, Some(3));
}

#[test]
fn converting_to_another_format_fills_missing_fields_with_dashes() {
    let (_, records) = decode(&file(&LogFormat::parse(NAT_FORMAT).unwrap(), NAT_ROWS));
    let text = encode_text(&LogFormat::aws_default(), &records[..1]);
    assert_eq!(
        text,
        format!(
            "{DEFAULT_HEADER}\n2 - eni-1235b8ca123456789 10.0.1.5 10.0.0.220 - - - - - - - - -\n"
        )
    );
    let (_, v5) = decode(&file(&LogFormat::parse(V5_FORMAT).unwrap(), V5_ROWS));
    let text = encode_text(&LogFormat::aws_default(), &v5[1..]);
    assert_eq!(
        text,
        format!(
            "{DEFAULT_HEADER}\n2 123456789012 eni-1235b8ca123456789 10.0.0.71 52.95.128.179 34210 80 6 7 471 1616729292 1616729349 ACCEPT OK\n"
        )
    );
}

#[test]
fn header_is_the_field_ids_in_format_order() {
    assert_eq!(LogFormat::aws_default().header(), DEFAULT_HEADER);
    let custom =
        LogFormat::parse("${account-id} ${bytes} ${dstaddr} ${dstport} ${end} ${instance-id}")
            .unwrap();
    assert_eq!(
        custom.header(),
        "account-id bytes dstaddr dstport end instance-id"
    );
    assert_eq!(custom.fields()[1], FieldId::Bytes);
}
