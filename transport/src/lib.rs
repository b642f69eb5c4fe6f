//! The flowlog agent → aggregator protocol (`proto/flowlog/ingest/v1/ingest.proto`).
//!
//! - [`pb`]: the generated messages, client and server of the `Ingest` service;
//! - [`encode_batch`] / [`decode_batch`]: [`FlowRecord`]s to and from a [`pb::RecordBatch`],
//!   whose text values travel once per batch in a string table;
//! - the names and limits both sides agree on, among them the rule for agent ids
//!   ([`validate_agent_id`]): the agent checks its own at start, the aggregator every id
//!   it is sent and every id of its tokens file.

use std::collections::HashMap;
use std::net::IpAddr;

use flowlog_formats::{Action, FlowDirection, FlowRecord, LogStatus, Text, TrafficType};

/// Generated code of `flowlog.ingest.v1`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod pb {
    tonic::include_proto!("flowlog.ingest.v1");
}

/// Metadata key of the bearer token (`authorization: Bearer <token>`).
pub const AUTHORIZATION: &str = "authorization";

/// Largest encoded message either side accepts (before decompression limits apply).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Most records one batch may hold.
pub const MAX_BATCH_RECORDS: usize = 1_000_000;

/// Longest agent id accepted, in bytes (all of them ASCII).
pub const MAX_AGENT_ID_LEN: usize = 255;

/// An agent id that breaks the rule of [`validate_agent_id`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentIdError {
    /// The id is empty.
    #[error("the agent id is empty")]
    Empty,
    /// The id is longer than [`MAX_AGENT_ID_LEN`].
    #[error("the agent id is {len} bytes long (at most {MAX_AGENT_ID_LEN})")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The id holds a character outside the allowed set.
    #[error(
        "the agent id '{id}' holds {character:?}; use letters, digits, '.', '-', '_', ':' or '@'"
    )]
    Character {
        /// The id, escaped for display.
        id: String,
        /// The first character not allowed.
        character: char,
    },
}

/// Checks an agent id: 1 to [`MAX_AGENT_ID_LEN`] ASCII letters, digits and `.`, `-`, `_`,
/// `:`, `@` (host names and `user@host` fit). The one rule for both sides: the agent
/// refuses to start with an id that breaks it, the aggregator refuses such ids in pushes
/// and in its tokens file.
///
/// # Errors
///
/// [`AgentIdError`] says which part of the rule the id breaks.
pub fn validate_agent_id(id: &str) -> Result<(), AgentIdError> {
    if id.is_empty() {
        return Err(AgentIdError::Empty);
    }
    if id.len() > MAX_AGENT_ID_LEN {
        return Err(AgentIdError::TooLong { len: id.len() });
    }
    if let Some(character) = id.chars().find(|&c| !is_agent_id_char(c)) {
        return Err(AgentIdError::Character {
            id: id.escape_debug().to_string(),
            character,
        });
    }
    Ok(())
}

fn is_agent_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '@')
}

/// A batch that cannot be turned into records. Names the record and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// A field of one record is out of range.
    #[error("record {record}, field '{field}': {problem}")]
    Field {
        /// Index of the record within the batch.
        record: usize,
        /// Flow log name of the field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The batch holds more records than allowed.
    #[error("the batch holds {records} records; at most {max} are allowed")]
    TooManyRecords {
        /// Records in the batch.
        records: usize,
        /// The limit.
        max: usize,
    },
}

macro_rules! record_fields {
    (
        text: $($t:ident = $tn:literal),* ;
        ip: $($i:ident = $in_:literal),* ;
        int: $($n:ident : $nty:ty = $nn:literal),* ;
        code: $($c:ident / $cpb:ident : $cty:ident = $cn:literal),* $(;)?
    ) => {
        fn encode_record<'a>(r: &'a FlowRecord, table: &mut StringTable<'a>) -> pb::Record {
            pb::Record {
                $( $t: r.$t.as_deref().map_or(0, |s| table.index(s)), )*
                $( $i: r.$i.map_or_else(bytes::Bytes::new, ip_bytes), )*
                $( $n: r.$n.map(Into::into), )*
                $( $cpb: r.$c.map_or(0, |v| code_of($cty::ALL, v)), )*
            }
        }

        fn decode_record(index: usize, p: &pb::Record, strings: &[Text]) -> Result<FlowRecord, BatchError> {
            let err = |field: &'static str, problem: String| BatchError::Field { record: index, field, problem };
            Ok(FlowRecord {
                $( $t: text_at(strings, p.$t).map_err(|e| err($tn, e))?, )*
                $( $i: ip_from(&p.$i).map_err(|e| err($in_, e))?, )*
                $( $n: p.$n.map(|v| <$nty>::try_from(v).map_err(|_| err($nn, format!("{v} is out of range 0..={}", <$nty>::MAX)))).transpose()?, )*
                $( $c: value_of($cty::ALL, p.$cpb).map_err(|e| err($cn, e))?, )*
            })
        }
    };
}

record_fields! {
    text:
        account_id = "account-id", interface_id = "interface-id", vpc_id = "vpc-id",
        subnet_id = "subnet-id", instance_id = "instance-id", region = "region",
        az_id = "az-id", sublocation_type = "sublocation-type", sublocation_id = "sublocation-id",
        pkt_src_aws_service = "pkt-src-aws-service", pkt_dst_aws_service = "pkt-dst-aws-service",
        ecs_cluster_arn = "ecs-cluster-arn", ecs_cluster_name = "ecs-cluster-name",
        ecs_container_instance_arn = "ecs-container-instance-arn",
        ecs_container_instance_id = "ecs-container-instance-id",
        ecs_container_id = "ecs-container-id", ecs_second_container_id = "ecs-second-container-id",
        ecs_service_name = "ecs-service-name", ecs_task_definition_arn = "ecs-task-definition-arn",
        ecs_task_arn = "ecs-task-arn", ecs_task_id = "ecs-task-id", reject_reason = "reject-reason",
        resource_id = "resource-id", instance_tag = "instance-tag", instance_tag_2 = "instance-tag-2",
        interface_tag = "interface-tag", interface_tag_2 = "interface-tag-2", asg_tag = "asg-tag",
        asg_tag_2 = "asg-tag-2", interface_type = "interface-type",
        next_hop_interface_id = "next-hop-interface-id", next_hop_subnet_id = "next-hop-subnet-id",
        next_hop_az_id = "next-hop-az-id", next_hop_vpc_id = "next-hop-vpc-id",
        next_hop_interface_type = "next-hop-interface-type";
    ip:
        srcaddr = "srcaddr", dstaddr = "dstaddr", pkt_srcaddr = "pkt-srcaddr", pkt_dstaddr = "pkt-dstaddr";
    int:
        srcport: u16 = "srcport", dstport: u16 = "dstport", protocol: u8 = "protocol",
        packets: u64 = "packets", bytes: u64 = "bytes", start: u64 = "start", end: u64 = "end",
        tcp_flags: u16 = "tcp-flags", traffic_path: u8 = "traffic-path",
        encryption_status: u8 = "encryption-status";
    code:
        action / action: Action = "action", log_status / log_status: LogStatus = "log-status",
        traffic_type / r#type: TrafficType = "type",
        flow_direction / flow_direction: FlowDirection = "flow-direction";
}

/// Builds the string table of one batch.
#[derive(Debug, Default)]
struct StringTable<'a> {
    index: HashMap<&'a str, u32>,
    strings: Vec<String>,
}

impl<'a> StringTable<'a> {
    fn index(&mut self, s: &'a str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        self.strings.push(s.to_owned());
        let i = u32::try_from(self.strings.len()).unwrap_or(u32::MAX);
        self.index.insert(s, i);
        i
    }
}

fn ip_bytes(ip: IpAddr) -> bytes::Bytes {
    match ip {
        IpAddr::V4(a) => bytes::Bytes::copy_from_slice(&a.octets()),
        IpAddr::V6(a) => bytes::Bytes::copy_from_slice(&a.octets()),
    }
}

fn ip_from(bytes: &[u8]) -> Result<Option<IpAddr>, String> {
    match bytes.len() {
        0 => Ok(None),
        4 => Ok(<[u8; 4]>::try_from(bytes).ok().map(IpAddr::from)),
        16 => Ok(<[u8; 16]>::try_from(bytes).ok().map(IpAddr::from)),
        n => Err(format!("a {n}-byte address (must be 4 or 16 bytes)")),
    }
}

fn text_at(strings: &[Text], index: u32) -> Result<Option<Text>, String> {
    match index {
        0 => Ok(None),
        i => strings
            .get(i as usize - 1)
            .map(|t| Some(Text::clone(t)))
            .ok_or_else(|| {
                format!(
                    "string index {i} is outside the batch's table of {} strings",
                    strings.len()
                )
            }),
    }
}

fn code_of<T: PartialEq>(all: &[T], value: T) -> u32 {
    all.iter()
        .position(|v| *v == value)
        .map_or(0, |i| u32::try_from(i + 1).unwrap_or(0))
}

fn value_of<T: Copy>(all: &[T], code: u32) -> Result<Option<T>, String> {
    match code {
        0 => Ok(None),
        c => all
            .get(c as usize - 1)
            .copied()
            .map(Some)
            .ok_or_else(|| format!("code {c} is not one of 1..={}", all.len())),
    }
}

/// Why [`count_push_records`] could not count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed protobuf at byte {offset}: {problem}")]
pub struct WireError {
    /// Offset of the bad byte within the message.
    pub offset: usize,
    /// What is wrong.
    pub problem: &'static str,
}

fn read_varint(buf: &[u8], at: &mut usize) -> Result<u64, WireError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&b) = buf.get(*at) else {
            return Err(WireError {
                offset: *at,
                problem: "truncated varint",
            });
        };
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError {
        offset: *at,
        problem: "varint longer than 10 bytes",
    })
}

/// Called for each length-delimited field: field number, payload, payload offset.
type FieldVisitor<'a> = dyn FnMut(u64, &[u8], usize) -> Result<(), WireError> + 'a;

/// Walks the fields of one message in `buf`, calling `each(field number, payload)` for
/// every length-delimited field and skipping the others.
fn walk_fields(buf: &[u8], base: usize, each: &mut FieldVisitor<'_>) -> Result<(), WireError> {
    let mut at = 0;
    while at < buf.len() {
        let start = at;
        let key = read_varint(buf, &mut at).map_err(|e| WireError {
            offset: base + e.offset,
            ..e
        })?;
        let truncated = WireError {
            offset: base + start,
            problem: "field runs past the end of its message",
        };
        match key & 7 {
            0 => {
                read_varint(buf, &mut at).map_err(|e| WireError {
                    offset: base + e.offset,
                    ..e
                })?;
            }
            1 => {
                at = at
                    .checked_add(8)
                    .filter(|&e| e <= buf.len())
                    .ok_or(truncated)?
            }
            5 => {
                at = at
                    .checked_add(4)
                    .filter(|&e| e <= buf.len())
                    .ok_or(truncated)?
            }
            2 => {
                let len = read_varint(buf, &mut at).map_err(|e| WireError {
                    offset: base + e.offset,
                    ..e
                })?;
                let end = usize::try_from(len)
                    .ok()
                    .and_then(|l| at.checked_add(l))
                    .filter(|&e| e <= buf.len())
                    .ok_or(truncated)?;
                each(key >> 3, &buf[at..end], base + at)?;
                at = end;
            }
            _ => {
                return Err(WireError {
                    offset: base + start,
                    problem: "unsupported wire type",
                });
            }
        }
    }
    Ok(())
}

/// Counts the records of an encoded `PushRequest` without decoding them: O(bytes), no
/// allocation. A server calls it before decoding, so that a small message of many empty
/// records (2 bytes each on the wire, hundreds once decoded) is refused before it costs
/// memory. Several `batch` fields (protobuf merges them) are all counted.
pub fn count_push_records(message: &[u8]) -> Result<usize, WireError> {
    let mut records = 0usize;
    walk_fields(message, 0, &mut |field, batch, base| {
        if field == 5 {
            walk_fields(batch, base, &mut |field, _, _| {
                if field == 2 {
                    records += 1;
                }
                Ok(())
            })?;
        }
        Ok(())
    })?;
    Ok(records)
}

/// Encodes records as a batch (text values once, in the string table).
pub fn encode_batch(records: &[FlowRecord]) -> pb::RecordBatch {
    let mut table = StringTable::default();
    let records = records
        .iter()
        .map(|r| encode_record(r, &mut table))
        .collect();
    pb::RecordBatch {
        strings: table.strings,
        records,
    }
}

/// Decodes a batch into records, refusing it whole (naming the record and field) if any
/// value is out of range.
pub fn decode_batch(batch: &pb::RecordBatch) -> Result<Vec<FlowRecord>, BatchError> {
    let mut out = Vec::with_capacity(batch.records.len());
    decode_batch_into(batch, &mut out)?;
    Ok(out)
}

/// Like [`decode_batch`], appending to `out` (a reused buffer). On error `out` is left with
/// the records decoded before the bad one; callers discard it.
pub fn decode_batch_into(
    batch: &pb::RecordBatch,
    out: &mut Vec<FlowRecord>,
) -> Result<(), BatchError> {
    if batch.records.len() > MAX_BATCH_RECORDS {
        return Err(BatchError::TooManyRecords {
            records: batch.records.len(),
            max: MAX_BATCH_RECORDS,
        });
    }
    let strings: Vec<Text> = batch
        .strings
        .iter()
        .map(|s| Text::from(s.as_str()))
        .collect();
    out.reserve(batch.records.len());
    for (i, r) in batch.records.iter().enumerate() {
        out.push(decode_record(i, r, &strings)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use prost::Message;

    #[test]
    fn agent_ids() {
        for ok in [
            "ip-10-0-0-1.eu-west-1.compute.internal",
            "web_01",
            "svc@host-7",
            "fd00::1",
            "a",
            &"x".repeat(MAX_AGENT_ID_LEN),
        ] {
            assert_eq!(validate_agent_id(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_agent_id(""), Err(AgentIdError::Empty));
        assert_eq!(
            validate_agent_id(&"x".repeat(256)),
            Err(AgentIdError::TooLong { len: 256 })
        );
        for (bad, character) in [
            ("a b", ' '),
            ("web/01", '/'),
            ("h\u{e9}te", '\u{e9}'),
            ("tab\there", '\t'),
            ("semi;colon", ';'),
            ("star*", '*'),
        ] {
            assert_eq!(
                validate_agent_id(bad),
                Err(AgentIdError::Character {
                    id: bad.escape_debug().to_string(),
                    character
                }),
                "{bad:?}"
            );
        }
        assert_eq!(
            validate_agent_id("web 01").unwrap_err().to_string(),
            "the agent id 'web 01' holds ' '; use letters, digits, '.', '-', '_', ':' or '@'"
        );
        assert_eq!(
            validate_agent_id("a\nb").unwrap_err().to_string(),
            "the agent id 'a\\nb' holds '\\n'; use letters, digits, '.', '-', '_', ':' or '@'"
        );
    }

    fn full_record() -> FlowRecord {
        let mut r = FlowRecord::no_data(Some("123456789012".into()), Some("eni-1".into()), 1, 2);
        r.srcaddr = Some("10.0.0.1".parse().unwrap());
        r.dstaddr = Some("2001:db8::1".parse().unwrap());
        r.srcport = Some(65535);
        r.dstport = Some(0);
        r.protocol = Some(6);
        r.packets = Some(u64::MAX);
        r.bytes = Some(40);
        r.action = Some(Action::Reject);
        r.log_status = Some(LogStatus::Ok);
        r.vpc_id = Some("vpc-1".into());
        r.subnet_id = Some("subnet-1".into());
        r.tcp_flags = Some(19);
        r.traffic_type = Some(TrafficType::IPv6);
        r.flow_direction = Some(FlowDirection::Egress);
        r.traffic_path = Some(8);
        r.region = Some("eu-west-1".into());
        r.next_hop_interface_type = Some("eni-1".into());
        r.encryption_status = Some(2);
        r
    }

    #[test]
    fn records_round_trip_through_the_wire_form() {
        let records = vec![full_record(), FlowRecord::default(), full_record()];
        let batch = encode_batch(&records);
        // "eni-1" is sent once although three fields of two records hold it.
        assert_eq!(batch.strings.iter().filter(|s| *s == "eni-1").count(), 1);
        let bytes = batch.encode_to_vec();
        let back = pb::RecordBatch::decode(bytes.as_slice()).unwrap();
        assert_eq!(decode_batch(&back).unwrap(), records);
    }

    #[test]
    fn bad_values_are_refused_naming_record_and_field() {
        let mut batch = encode_batch(&[full_record(), full_record()]);
        batch.records[1].srcport = Some(70000);
        assert_eq!(
            decode_batch(&batch).unwrap_err().to_string(),
            "record 1, field 'srcport': 70000 is out of range 0..=65535"
        );
        let mut batch = encode_batch(&[full_record()]);
        batch.records[0].dstaddr = bytes::Bytes::from_static(&[1, 2, 3]);
        assert_eq!(
            decode_batch(&batch).unwrap_err().to_string(),
            "record 0, field 'dstaddr': a 3-byte address (must be 4 or 16 bytes)"
        );
        let mut batch = encode_batch(&[full_record()]);
        batch.records[0].vpc_id = 99;
        assert!(
            decode_batch(&batch)
                .unwrap_err()
                .to_string()
                .starts_with("record 0, field 'vpc-id': string index 99 is outside")
        );
        let mut batch = encode_batch(&[full_record()]);
        batch.records[0].log_status = 4;
        assert_eq!(
            decode_batch(&batch).unwrap_err().to_string(),
            "record 0, field 'log-status': code 4 is not one of 1..=3"
        );
    }

    #[test]
    fn records_are_counted_on_the_wire() {
        let push = pb::PushRequest {
            agent_id: "a".into(),
            spool_id: 1,
            seq: 2,
            acked_below: 1,
            batch: Some(encode_batch(&[
                full_record(),
                FlowRecord::default(),
                full_record(),
            ])),
        };
        let mut bytes = push.encode_to_vec();
        assert_eq!(count_push_records(&bytes).unwrap(), 3);
        // A second batch field merges into the first: both are counted.
        let more = pb::PushRequest {
            batch: Some(encode_batch(&vec![FlowRecord::default(); 2])),
            ..pb::PushRequest::default()
        };
        bytes.extend(more.encode_to_vec());
        assert_eq!(count_push_records(&bytes).unwrap(), 5);
        assert_eq!(
            pb::PushRequest::decode(bytes.as_slice())
                .unwrap()
                .batch
                .unwrap()
                .records
                .len(),
            5
        );
        assert_eq!(count_push_records(&[]).unwrap(), 0);
        // Truncated: the length runs past the end.
        let e = count_push_records(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(
            e.to_string().starts_with("malformed protobuf at byte"),
            "{e}"
        );
        assert!(count_push_records(&[0x2a, 0x05, 0x12]).is_err());
        assert!(count_push_records(&[0xff; 11]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn the_wire_count_matches_the_decoder(n in 0usize..50) {
            let push = pb::PushRequest {
                batch: Some(encode_batch(&vec![full_record(); n])),
                ..pb::PushRequest::default()
            };
            let bytes = push.encode_to_vec();
            proptest::prop_assert_eq!(count_push_records(&bytes).unwrap(), n);
        }


        #[test]
        fn any_ports_and_counters_round_trip(
            sp in proptest::option::of(proptest::num::u16::ANY),
            pk in proptest::option::of(proptest::num::u64::ANY),
            flags in proptest::option::of(proptest::num::u16::ANY),
            v6 in proptest::array::uniform16(proptest::num::u8::ANY),
        ) {
            let mut r = full_record();
            r.srcport = sp;
            r.packets = pk;
            r.tcp_flags = flags;
            r.pkt_srcaddr = Some(IpAddr::from(v6));
            let back = decode_batch(&encode_batch(std::slice::from_ref(&r))).unwrap();
            proptest::prop_assert_eq!(back, vec![r]);
        }
    }
}
