//! `flowlog-aggregator serve` end to end: batches pushed over gRPC/TLS are acked once in
//! the WAL and published exactly once, also when pushed again across a `kill -9`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod serve_support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use flowlog_transport::encode_batch;
use serve_support::{
    AGENT_A, AGENT_B, ClientTls, Env, client, counted, push, push_a, push_request, records, rt,
    tls_listen,
};
use tonic::Code;
use tonic::codec::CompressionEncoding;

/// GET `path` from the metrics endpoint.
fn http_get(address: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn pushed_batches_are_acked_and_published_exactly_once() {
    let env = Env::new(|pki| format!("{}\n", tls_listen(pki)));
    // Metrics on a free port, found in the log.
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        "log_level = \"info\"",
        "log_level = \"info\"\nmetrics_address = \"127.0.0.1:0\"",
    );
    std::fs::write(&env.config, text).unwrap();
    let mut server = env.serve();
    let metrics_line = server.wait_for_log("metrics endpoint listening", Duration::from_secs(30));
    let metrics_address = metrics_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap()
        .to_owned();

    let rt = rt();
    let mut expected = BTreeMap::new();
    rt.block_on(async {
        let tls = ClientTls::trusting(&env.pki);
        let plain = client(&server, &tls).await;
        let mut zstd = client(&server, &tls)
            .await
            .send_compressed(CompressionEncoding::Zstd);
        let mut gzip = client(&server, &tls)
            .await
            .send_compressed(CompressionEncoding::Gzip);
        for (seq, mut c) in [(1, plain.clone()), (2, zstd.clone()), (3, gzip.clone())] {
            let batch = records(1, seq * 1000, 500);
            let reply = push_a(&mut c, seq, &batch).await.unwrap();
            assert!(!reply.duplicate, "seq {seq}");
            expected.extend(counted(&batch));
        }
        // The same batch again, even over another connection: acked as a duplicate.
        let again = push_a(&mut gzip, 2, &records(1, 2000, 500)).await.unwrap();
        assert!(again.duplicate);
        // Another agent with the same numbers is not a duplicate.
        let b = records(2, 0, 300);
        let reply = push(
            &mut zstd,
            Some(AGENT_B.1),
            push_request(AGENT_B.0, 1, 1, encode_batch(&b)),
        )
        .await
        .unwrap();
        assert!(!reply.duplicate);
        expected.extend(counted(&b));
    });

    let metrics = http_get(&metrics_address, "/metrics");
    for line in [
        "flowlog_ingest_batches_total{result=\"accepted\"} 4",
        "flowlog_ingest_batches_total{result=\"duplicate\"} 1",
        "flowlog_ingest_records_total 1800",
        "flowlog_ingest_dedupe_hits_total 1",
        "flowlog_ingest_pending_records 0",
        "flowlog_ingest_agents 2",
        "flowlog_ingest_push_seconds_count 5",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }

    let (status, log) = server.terminate();
    assert!(status.success(), "{status}\n{log}");
    assert_eq!(env.published(), expected);
}

#[test]
fn a_batch_pushed_again_after_kill_9_is_a_duplicate() {
    let env = Env::tls();
    let rt = rt();
    let first = records(1, 0, 700);
    let second = records(1, 1000, 300);

    let server = env.serve();
    rt.block_on(async {
        let mut c = client(&server, &ClientTls::trusting(&env.pki)).await;
        assert!(!push_a(&mut c, 1, &first).await.unwrap().duplicate);
    });
    // Acked, then the process dies before anything is published.
    server.kill();

    let server = env.serve();
    rt.block_on(async {
        let mut c = client(&server, &ClientTls::trusting(&env.pki)).await;
        assert!(push_a(&mut c, 1, &first).await.unwrap().duplicate);
        assert!(!push_a(&mut c, 2, &second).await.unwrap().duplicate);
        assert!(push_a(&mut c, 2, &second).await.unwrap().duplicate);
    });
    server.kill();

    // And once more after a clean stop.
    let server = env.serve();
    rt.block_on(async {
        let mut c = client(&server, &ClientTls::trusting(&env.pki)).await;
        assert!(push_a(&mut c, 1, &first).await.unwrap().duplicate);
        assert!(push_a(&mut c, 2, &second).await.unwrap().duplicate);
    });
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    let mut expected = counted(&first);
    expected.extend(counted(&second));
    assert_eq!(env.published(), expected);
}

#[test]
fn a_malformed_batch_is_refused_and_the_channel_carries_on() {
    let env = Env::tls();
    let server = env.serve();
    let rt = rt();
    let good = records(1, 0, 10);
    rt.block_on(async {
        let mut c = client(&server, &ClientTls::trusting(&env.pki)).await;
        let mut bad = encode_batch(&records(1, 100, 10));
        bad.records[3].srcport = Some(70_000);
        let e = push(&mut c, Some(AGENT_A.1), push_request(AGENT_A.0, 1, 1, bad))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert_eq!(
            e.message(),
            "record 3, field 'srcport': 70000 is out of range 0..=65535"
        );
        let mut bad = encode_batch(&records(1, 100, 10));
        bad.records[0].vpc_id = 40;
        let e = push(&mut c, Some(AGENT_A.1), push_request(AGENT_A.0, 1, 1, bad))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("record 0, field 'vpc-id'"), "{e:?}");
        // An empty agent id.
        let e = push(
            &mut c,
            Some(AGENT_A.1),
            push_request("", 1, 1, encode_batch(&good)),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("agent id is empty"), "{e:?}");
        // Bytes that are no PushRequest at all.
        let e = serve_support::push_raw(
            &server,
            &ClientTls::trusting(&env.pki),
            AGENT_A.1,
            vec![0xff; 16],
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("not a valid PushRequest"), "{e:?}");
        // The same client and channel right after: accepted.
        assert!(!push_a(&mut c, 1, &good).await.unwrap().duplicate);
    });
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("refused an invalid push"), "{log}");
    assert_eq!(env.published(), counted(&good));
}

#[test]
fn an_oversized_batch_is_invalid_argument_naming_the_limit() {
    let env = Env::new(|pki| format!("{}max_batch_bytes = \"4KiB\"\n", tls_listen(pki)));
    let server = env.serve();
    let rt = rt();
    let small = records(1, 0, 5);
    rt.block_on(async {
        let tls = ClientTls::trusting(&env.pki);
        let mut plain = client(&server, &tls).await;
        let big = records(1, 1000, 400);
        let e = push_a(&mut plain, 2, &big).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message()
                .starts_with("the batch is larger than listen.max_batch_bytes (4096 bytes)"),
            "{e:?}"
        );
        // Small on the wire, too large once decompressed.
        let mut zstd = client(&server, &tls)
            .await
            .send_compressed(CompressionEncoding::Zstd);
        let e = push_a(&mut zstd, 2, &big).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("4096 bytes"), "{e:?}");
        assert!(!push_a(&mut zstd, 1, &small).await.unwrap().duplicate);
    });
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    assert_eq!(env.published(), counted(&small));
}

#[test]
fn insecure_serves_plaintext_and_warns() {
    let env = Env::new(|_| "insecure = true\n".to_owned());
    let server = env.serve();
    let rt = rt();
    let batch = records(1, 0, 20);
    rt.block_on(async {
        let mut c = client(&server, &ClientTls::default()).await;
        assert!(!push_a(&mut c, 1, &batch).await.unwrap().duplicate);
    });
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("insecure = true")),
        "{log}"
    );
    assert_eq!(env.published(), counted(&batch));
}
