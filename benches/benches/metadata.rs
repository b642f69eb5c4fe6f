//! Cost of the agent's per-record metadata step (`MetadataSettings::apply`: interface ids,
//! `pkt-src-aws-service` / `pkt-dst-aws-service` from a real-sized ip-ranges.json,
//! `traffic-path` from CIDR classes), and of one ip-ranges lookup alone.
//!
//! The ip-ranges document is generated in the shape of AWS's file: 8,000 IPv4 and 2,500
//! IPv6 prefixes, each specific range repeated under `AMAZON`, nested ranges, 20 services.
//! Records are half AWS-bound traffic, half private or other public addresses; egress and
//! ingress alternate.
//!
//! Run with `cargo bench -p flowlog-benches --bench metadata`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use flowlog_agent::config;
use flowlog_agent::metadata::AwsIpRanges;
use flowlog_benches::SplitMix64;
use flowlog_formats::{Action, FlowDirection, FlowRecord, LogStatus};

const V4_PREFIXES: usize = 8_000;
const V6_PREFIXES: usize = 2_500;
const RECORDS: usize = 4_096;
const SEED: u64 = 0x00F1_0E10_6000_0002;

const SERVICES: [&str; 20] = [
    "EC2",
    "S3",
    "CLOUDFRONT",
    "DYNAMODB",
    "ROUTE53",
    "ROUTE53_HEALTHCHECKS",
    "ROUTE53_RESOLVER",
    "API_GATEWAY",
    "GLOBALACCELERATOR",
    "CODEBUILD",
    "EBS",
    "CLOUD9",
    "AMAZON_CONNECT",
    "AMAZON_APPFLOW",
    "CHIME_MEETINGS",
    "CHIME_VOICECONNECTOR",
    "EC2_INSTANCE_CONNECT",
    "KINESIS_VIDEO_STREAMS",
    "WORKSPACES_GATEWAYS",
    "ROUTE53_HEALTHCHECKS_PUBLISHING",
];

/// Public first octets AWS announces much of its space in.
const V4_FIRST_OCTETS: [u8; 12] = [3, 13, 15, 18, 34, 35, 44, 52, 54, 99, 100, 176];

fn pick<'a, T>(rng: &mut SplitMix64, items: &'a [T]) -> &'a T {
    let i = usize::try_from(rng.below(items.len() as u64)).unwrap();
    &items[i]
}

/// Returns the generated ip-ranges.json and a sample of addresses inside its ranges.
fn ip_ranges_json(rng: &mut SplitMix64) -> (String, Vec<IpAddr>) {
    let entry = |key: &str, prefix: &str, service: &str| {
        format!(
            "{{\"{key}\":\"{prefix}\",\"region\":\"eu-west-3\",\"service\":\"{service}\",\"network_border_group\":\"eu-west-3\"}}"
        )
    };
    let mut inside = Vec::new();
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for i in 0..V4_PREFIXES {
        let len = 16 + u8::try_from(rng.below(13)).unwrap();
        let base = u32::from_be_bytes([*pick(rng, &V4_FIRST_OCTETS), 0, 0, 0])
            | (u32::try_from(rng.below(1 << 24)).unwrap());
        let network = base & !(u32::MAX >> len);
        let prefix = format!("{}/{len}", Ipv4Addr::from(network));
        let service = if i % 3 == 0 {
            "AMAZON"
        } else {
            *pick(rng, &SERVICES)
        };
        if service != "AMAZON" {
            // AWS lists every specific range under AMAZON too.
            v4.push(entry("ip_prefix", &prefix, "AMAZON"));
        }
        v4.push(entry("ip_prefix", &prefix, service));
        let host = u32::try_from(rng.below(1u64 << (32 - len))).unwrap();
        inside.push(IpAddr::V4(Ipv4Addr::from(network | host)));
    }
    for i in 0..V6_PREFIXES {
        let len = 40 + u8::try_from(rng.below(25)).unwrap();
        // Under 2600:1f00::/32, as much of AWS's IPv6 space is.
        let base = (0x2600_1f00u128 << 96) | (u128::from(rng.next_u64()) << 32);
        let network = base & !(u128::MAX >> len);
        let prefix = format!("{}/{len}", Ipv6Addr::from(network));
        let service = if i % 3 == 0 {
            "AMAZON"
        } else {
            *pick(rng, &SERVICES)
        };
        if service != "AMAZON" {
            v6.push(entry("ipv6_prefix", &prefix, "AMAZON"));
        }
        v6.push(entry("ipv6_prefix", &prefix, service));
        inside.push(IpAddr::V6(Ipv6Addr::from(network | 1)));
    }
    let json = format!(
        "{{\"syncToken\":\"1704067200\",\"createDate\":\"2024-01-01-00-00-00\",\"prefixes\":[{}],\"ipv6_prefixes\":[{}]}}",
        v4.join(","),
        v6.join(",")
    );
    (json, inside)
}

fn records(rng: &mut SplitMix64, aws: &[IpAddr]) -> Vec<FlowRecord> {
    let host = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 10));
    (0..RECORDS)
        .map(|i| {
            let remote = match rng.below(4) {
                0 | 1 => *pick(rng, aws),
                2 => IpAddr::V4(Ipv4Addr::new(
                    10,
                    0,
                    u8::try_from(rng.below(256)).unwrap(),
                    7,
                )),
                _ => IpAddr::V4(Ipv4Addr::from(u32::try_from(rng.next_u64() >> 32).unwrap())),
            };
            let egress = i % 2 == 0;
            let (src, dst) = if egress {
                (host, remote)
            } else {
                (remote, host)
            };
            FlowRecord {
                interface_id: Some("eni-0123456789abcdef0".into()),
                srcaddr: Some(src),
                dstaddr: Some(dst),
                pkt_srcaddr: Some(src),
                pkt_dstaddr: Some(dst),
                action: Some(Action::Accept),
                log_status: Some(LogStatus::Ok),
                flow_direction: Some(if egress {
                    FlowDirection::Egress
                } else {
                    FlowDirection::Ingress
                }),
                ..FlowRecord::default()
            }
        })
        .collect()
}

const CONFIG: &str = r#"
[flow_log]
id = "fl-0a1b2c3d4e5f60718"
account_id = "123456789012"
region = "eu-west-3"
[metadata]
instance_id = "i-0c50d5961bcb2d47b"
vpc_id = "vpc-abcdefab012345678"
az_id = "euw3-az1"
[[metadata.subnet]]
cidr = "10.0.1.0/24"
subnet_id = "subnet-aaaaaaaa012345678"
[[metadata.traffic_path]]
cidr = "0.0.0.0/0"
path = 8
[[metadata.traffic_path]]
cidr = "10.0.0.0/16"
path = 1
[[metadata.traffic_path]]
cidr = "52.95.128.0/21"
path = 7
[[interface]]
name = "eth1"
interface_id = "eni-1111111111abcdef0"
addresses = ["10.0.2.10"]
[[interface]]
name = "eth0"
interface_id = "eni-0123456789abcdef0"
addresses = ["10.0.1.10"]
"#;

fn bench(c: &mut Criterion) {
    let mut rng = SplitMix64::new(SEED);
    let (json, aws) = ip_ranges_json(&mut rng);
    let ranges = AwsIpRanges::from_json(json.as_bytes(), Path::new("generated.json")).unwrap();
    let mut settings = config::parse(CONFIG, "bench.toml").unwrap();
    settings.metadata.ip_ranges = Some(Arc::new(ranges));
    let records = records(&mut rng, &aws);
    let named = records
        .iter()
        .filter(|r| {
            let mut r = (*r).clone();
            settings.metadata.apply(&mut r);
            r.pkt_src_aws_service.is_some() || r.pkt_dst_aws_service.is_some()
        })
        .count();
    assert!(named > RECORDS / 3, "{named} records with a service");

    let mut group = c.benchmark_group("metadata");
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(RECORDS as u64));
    let metadata = &settings.metadata;
    // Fresh records each batch, as the flow table hands them over: the metadata fields
    // start empty.
    group.bench_function("apply", |b| {
        b.iter_batched_ref(
            || records.clone(),
            |batch| {
                for r in batch.iter_mut() {
                    metadata.apply(black_box(r));
                }
            },
            BatchSize::LargeInput,
        );
    });
    let ranges = metadata.ip_ranges.as_ref().unwrap();
    let addresses: Vec<IpAddr> = records.iter().filter_map(|r| r.pkt_dstaddr).collect();
    group.bench_function("ip_ranges_lookup", |b| {
        b.iter(|| {
            let mut found = 0usize;
            for a in &addresses {
                found += usize::from(ranges.service(black_box(*a)).is_some());
            }
            found
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
