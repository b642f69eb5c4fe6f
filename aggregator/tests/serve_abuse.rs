//! `flowlog-aggregator serve` under hostile and broken senders, as real processes over TLS
//! on loopback. In every scenario a well-behaved agent pushes its batches meanwhile; the
//! aggregator is killed (-9) in the middle of the attack, restarted, the agent resends what
//! it had not seen acknowledged, and every one of its records must be published exactly
//! once. The aggregator's peak resident memory during the attack must stay under
//! [`RSS_BOUND_MIB`].
//!
//! The bound: an idle `serve` peaks at about 30 MiB and these attacks at 32–67 MiB (debug
//! build); unbounded, they would cost gigabytes (an 8 MiB batch of empty records decodes
//! to ~1.7 GB, and 1,000 connections each buffering a body at the size limit to 16 GB).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod serve_support;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flowlog_formats::FlowRecord;
use flowlog_formats::input::RecordSource;
use flowlog_transport::pb::{PushRequest, Record, RecordBatch};
use flowlog_transport::{AUTHORIZATION, encode_batch};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use serve_support::{
    AGENT_A, AGENT_B, ClientTls, Env, Server, channel, channel_at, files_below, push, push_request,
    records, rt, tls_listen,
};
use tonic::Code;
use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::transport::Channel;

/// Peak resident memory the aggregator may reach in any scenario.
const RSS_BOUND_MIB: u64 = 128;

/// Batches of the well-behaved agent: 1..=10 before the kill, 6..=20 after it (6..=10 again,
/// as an agent resends what it may not have seen acknowledged).
const BATCHES: u64 = 20;
const RECORDS_PER_BATCH: u64 = 50;

/// The config: test-sized timeouts.
fn env() -> Env {
    Env::new(|pki| format!("{}body_timeout = \"2s\"\n", tls_listen(pki)))
}

fn good_records(seq: u64) -> Vec<FlowRecord> {
    records(1, seq * 1000, RECORDS_PER_BATCH)
}

/// Pushes agent A's batches `seqs` to `server`, each retried until acknowledged.
fn good_agent(server: &Server, env: &Env, seqs: std::ops::RangeInclusive<u64>) -> JoinHandle<()> {
    let address = server.address;
    let tls = ClientTls::trusting(&env.pki);
    std::thread::spawn(move || {
        rt().block_on(async move {
            let ch = channel_at(address, &tls);
            let mut client = flowlog_transport::pb::ingest_client::IngestClient::new(ch);
            for seq in seqs {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let request = push_request(AGENT_A.0, 1, seq, encode_batch(&good_records(seq)));
                    match push(&mut client, Some(AGENT_A.1), request).await {
                        Ok(_) => break,
                        Err(e) => {
                            assert!(
                                Instant::now() < deadline,
                                "batch {seq} not acknowledged within 60 s: {e:?}"
                            );
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    })
}

/// Published records by `bytes` (records without it under `u64::MAX`).
fn published(env: &Env) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for f in files_below(&env.out) {
        for r in RecordSource::open_path(&f, None).unwrap() {
            *out.entry(r.unwrap().bytes.unwrap_or(u64::MAX)).or_insert(0) += 1;
        }
    }
    out
}

/// Runs `attack` (it sets `ready` once under way, and goes on until told to stop); once it is
/// ready, the good agent pushes batches 1..=10 beside it; checks
/// the peak memory; kills the aggregator with -9 while the attack goes on; restarts it;
/// the agent pushes 6..=20; stops cleanly. Returns the published records, the log of the
/// first run and the attack's result.
fn scenario<T: Send + 'static>(
    env: &Env,
    attack: impl FnOnce(Arc<Server>, Arc<AtomicBool>, Arc<AtomicBool>) -> T + Send + 'static,
) -> (BTreeMap<u64, usize>, String, T) {
    let server = Arc::new(env.serve());
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let attacker = {
        let server = Arc::clone(&server);
        let stop = Arc::clone(&stop);
        let ready = Arc::clone(&ready);
        std::thread::spawn(move || attack(server, stop, ready))
    };
    // The attack gets going, then the good agent delivers beside it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready.load(Ordering::Relaxed) {
        assert!(
            !attacker.is_finished(),
            "the attack ended before it was under way"
        );
        assert!(Instant::now() < deadline, "the attack never got under way");
        std::thread::sleep(Duration::from_millis(20));
    }
    good_agent(&server, env, 1..=10).join().unwrap();
    let peak = server.peak_rss_mib();
    let log = server.log();
    assert!(
        peak <= RSS_BOUND_MIB,
        "peak RSS {peak} MiB > {RSS_BOUND_MIB} MiB\n{log}"
    );
    eprintln!("peak RSS during the attack: {peak} MiB");
    // kill -9 in the middle of the attack.
    server.signal("KILL");
    stop.store(true, Ordering::Relaxed);
    let result = attacker.join().unwrap();
    drop(server);
    restart(env, log, result)
}

fn restart<T>(env: &Env, log: String, result: T) -> (BTreeMap<u64, usize>, String, T) {
    let server = env.serve();
    good_agent(&server, env, 6..=BATCHES).join().unwrap();
    let (status, log2) = server.terminate();
    assert!(status.success(), "{log2}");
    (published(env), log, result)
}

/// Every record of the good agent exactly once.
fn assert_good_agent_exactly_once(published: &BTreeMap<u64, usize>) {
    let mut expected = BTreeMap::new();
    for seq in 1..=BATCHES {
        for r in good_records(seq) {
            expected.insert(r.bytes.unwrap(), 1);
        }
    }
    let got: BTreeMap<u64, usize> = published
        .iter()
        .filter(|(b, _)| (1_000_000..2_000_000).contains(*b))
        .map(|(b, n)| (*b, *n))
        .collect();
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
}

/// A request body: `head` at once, then one byte of `tail` every `every` (a slow client).
struct Trickle {
    head: Option<Bytes>,
    tail: Bytes,
    ticks: tokio::time::Interval,
}

impl http_body::Body for Trickle {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if self.tail.is_empty() {
            return Poll::Ready(None);
        }
        match self.ticks.poll_tick(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                let byte = self.tail.split_to(1);
                Poll::Ready(Some(Ok(Frame::data(byte))))
            }
        }
    }
}

/// Sends one `Push` call with a hand-made body; returns the gRPC status code.
async fn raw_call(
    ch: &mut Channel,
    server: &Server,
    token: Option<&str>,
    zstd: bool,
    body: impl http_body::Body<Data = Bytes, Error = tonic::Status> + Send + 'static,
) -> Result<(Code, String), String> {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "{}/flowlog.ingest.v1.Ingest/Push",
            server.url("https")
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if zstd {
        request = request.header("grpc-encoding", "zstd");
    }
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(tonic::body::Body::new(body)).unwrap();
    std::future::poll_fn(|cx| ch.poll_ready(cx))
        .await
        .map_err(|e| e.to_string())?;
    let response = ch
        .call(request)
        .await
        .map_err(|e| flowlog_runtime::error_chain(&e))?;
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return Ok((status.code(), status.message().to_owned()));
    }
    let mut body = response.into_body();
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(trailers) = frame.into_trailers()
            && let Some(status) = tonic::Status::from_header_map(&trailers)
        {
            return Ok((status.code(), status.message().to_owned()));
        }
    }
    Err("no grpc-status".into())
}

/// A gRPC message body: the prefix (compressed flag, length) and `message`.
fn framed(message: &[u8], compressed: bool) -> Bytes {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(u8::from(compressed));
    out.extend((message.len() as u32).to_be_bytes());
    out.extend(message);
    Bytes::from(out)
}

/// A `PushRequest` of `records` empty records, zstd-compressed.
fn empty_records_bomb(agent: &str, seq: u64, records: usize) -> Vec<u8> {
    let message = PushRequest {
        agent_id: agent.into(),
        spool_id: 9,
        seq,
        acked_below: 1,
        batch: Some(RecordBatch {
            strings: Vec::new(),
            records: vec![Record::default(); records],
        }),
    }
    .encode_to_vec();
    zstd::bulk::compress(&message, 19).unwrap()
}

#[test]
fn a_zstd_bomb_without_a_token_costs_its_headers_only() {
    let env = env();
    // 4 M empty records: 8 MiB once decompressed, ~1.7 GB decoded.
    let bomb = empty_records_bomb(AGENT_A.0, 1, 4 << 20);
    assert!(bomb.len() < 1024, "the bomb is {} bytes", bomb.len());
    let refused = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&refused);
    let pki = env.pki.clone();
    let (published, log, ()) = scenario(&env, move |server, stop, ready| {
        rt().block_on(async move {
            let ch = channel(&server, &ClientTls::trusting(&pki));
            while !stop.load(Ordering::Relaxed) {
                let calls = (0..16).map(|_| {
                    let mut ch = ch.clone();
                    let body = http_body_util::Full::new(framed(&bomb, true))
                        .map_err(|never| match never {});
                    let server = Arc::clone(&server);
                    async move { raw_call(&mut ch, &server, None, true, body).await }
                });
                for r in futures_join(calls).await {
                    match r {
                        Ok((code, _)) => {
                            assert_eq!(code, Code::Unauthenticated);
                            counted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => return,
                    }
                }
                ready.store(true, Ordering::Relaxed);
            }
        });
    });
    assert!(refused.load(Ordering::Relaxed) >= 16, "{log}");
    assert!(log.contains("reason=\"missing\""), "{log}");
    assert_good_agent_exactly_once(&published);
}

#[test]
fn a_thousand_unauthenticated_connections_do_not_lock_out_an_agent() {
    let env = env();
    let pki = env.pki.clone();
    let (published, log, opened) = scenario(&env, move |server, stop, ready| {
        rt().block_on(async move {
            let mut held = Vec::new();
            let mut opened = 0u64;
            for _ in 0..1000 {
                let mut ch = channel(&server, &ClientTls::trusting(&pki));
                let body =
                    http_body_util::Full::new(framed(b"", false)).map_err(|never| match never {});
                match raw_call(&mut ch, &server, Some("not-a-token-0000000"), false, body).await {
                    Ok((code, _)) => {
                        assert_eq!(code, Code::Unauthenticated);
                        opened += 1;
                    }
                    Err(e) => {
                        eprintln!("connection {opened}: {e}");
                        break;
                    }
                }
                held.push(ch);
            }
            ready.store(true, Ordering::Relaxed);
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            drop(held);
            opened
        })
    });
    assert_eq!(opened, 1000, "{log}");
    // 1,000 refusals, logged once per 10 s.
    let lines = log
        .lines()
        .filter(|l| l.contains("reason=\"unknown\""))
        .count();
    assert!((1..=5).contains(&lines), "{lines} lines\n{log}");
    assert_good_agent_exactly_once(&published);
}

#[test]
fn three_hundred_slow_streams_of_one_agent_hold_a_few_slots_briefly() {
    let env = env();
    let pki = env.pki.clone();
    let (published, log, codes) = scenario(&env, move |server, stop, ready| {
        rt().block_on(async move {
            let slow = |server: Arc<Server>, pki: flowlog_tests::pki::TestPki| async move {
                // Each stream on its own connection.
                let mut ch = channel(&server, &ClientTls::trusting(&pki));
                let body = Trickle {
                    // Claims a 1 MB message, then sends a byte every 100 ms.
                    head: Some(Bytes::from_static(&[0, 0, 0x0f, 0x42, 0x40])),
                    tail: Bytes::from(vec![0u8; 1000]),
                    ticks: tokio::time::interval(Duration::from_millis(100)),
                };
                raw_call(&mut ch, &server, Some(AGENT_B.1), false, body).await
            };
            let mut codes = BTreeMap::new();
            // Until told to stop, 300 slow streams at a time; the first round's answers
            // are returned.
            let mut first = true;
            while !stop.load(Ordering::Relaxed) {
                let calls: Vec<_> = (0..300)
                    .map(|_| slow(Arc::clone(&server), pki.clone()))
                    .collect();
                for r in futures_join(calls).await {
                    if first {
                        if let Err(e) = &r {
                            eprintln!("slow stream: {e}");
                        }
                        let code = r.map_or(Code::Unknown, |(c, _)| c);
                        *codes.entry(format!("{code:?}")).or_insert(0u32) += 1;
                    }
                }
                first = false;
                ready.store(true, Ordering::Relaxed);
            }
            codes
        })
    });
    // Agent B may hold max_calls_per_agent (16) calls, each for body_timeout (2 s); the rest
    // are refused at once. Nothing of agent B is written.
    assert_eq!(codes.get("Unavailable"), Some(&300), "{codes:?}\n{log}");
    assert!(log.contains("max_calls_per_agent"), "{log}");
    assert!(log.contains("listen.body_timeout"), "{log}");
    assert_good_agent_exactly_once(&published);
}

#[test]
fn empty_records_with_a_valid_token_are_bounded_by_count_before_decoding() {
    let env = env();
    let pki = env.pki.clone();
    let bomb = empty_records_bomb(AGENT_B.0, 2, 4 << 20);
    let (published, log, answers) = scenario(&env, move |server, stop, ready| {
        rt().block_on(async move {
            let mut client = flowlog_transport::pb::ingest_client::IngestClient::new(channel(
                &server,
                &ClientTls::trusting(&pki),
            ));
            // 10,000 empty records: a legal batch, published as 10,000 lines of '-'.
            let empty = RecordBatch {
                strings: Vec::new(),
                records: vec![Record::default(); 10_000],
            };
            let first = push(
                &mut client,
                Some(AGENT_B.1),
                push_request(AGENT_B.0, 9, 1, empty),
            )
            .await
            .map(|_| ());
            let mut refusals = Vec::new();
            let mut ch = channel(&server, &ClientTls::trusting(&pki));
            while !stop.load(Ordering::Relaxed) {
                let body =
                    http_body_util::Full::new(framed(&bomb, true)).map_err(|never| match never {});
                match raw_call(&mut ch, &server, Some(AGENT_B.1), true, body).await {
                    Ok(answer) => refusals.push(answer),
                    Err(_) => break,
                }
                ready.store(true, Ordering::Relaxed);
            }
            (first, refusals)
        })
    });
    let (first, refusals) = answers;
    assert!(first.is_ok(), "{first:?}\n{log}");
    assert!(!refusals.is_empty());
    for (code, message) in &refusals {
        assert_eq!(*code, Code::InvalidArgument, "{message}");
        assert!(
            message.contains("4194304 records; listen.max_batch_records allows at most 100000"),
            "{message}"
        );
    }
    assert_eq!(published.get(&u64::MAX), Some(&10_000));
    assert_good_agent_exactly_once(&published);
}

#[test]
fn unpublishable_values_are_quarantined_and_the_batch_goes_on() {
    let env = env();
    let pki = env.pki.clone();
    let mut batch = records(2, 0, 5);
    // Year 10000, year 2100, packets = 2^63; records 3 and 4 are good.
    batch[0].start = Some(253_402_300_800);
    batch[0].end = Some(253_402_300_800);
    batch[1].start = Some(4_102_444_800);
    batch[1].end = Some(4_102_444_800);
    batch[2].packets = Some(1 << 63);
    let (published, log, answer) = scenario(&env, move |server, _stop, ready| {
        push_once_as_b(&server, &pki, &batch, &ready)
    });
    assert!(answer.is_ok(), "{answer:?}\n{log}");
    assert_eq!(published.get(&2_000_003), Some(&1));
    assert_eq!(published.get(&2_000_004), Some(&1));
    for b in 2_000_000..2_000_003 {
        assert_eq!(published.get(&b), None, "{b}");
    }
    let text: String = std::fs::read_dir(env.state.join("quarantine"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let fields: Vec<(u64, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["record_index"].as_u64().unwrap(),
                l["field"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        fields,
        vec![(0, "start"), (1, "start"), (2, "packets")],
        "{text}"
    );
    for l in &lines {
        assert!(
            l["source"]
                .as_str()
                .unwrap()
                .starts_with("agent agent-b spool 0000000000000005 seq 1"),
            "{l}"
        );
    }
    assert_good_agent_exactly_once(&published);
}

#[test]
fn an_agent_cannot_publish_under_another_account() {
    let env = env();
    let pki = env.pki.clone();
    let mut batch = records(3, 0, 3);
    batch[2].account_id = Some("210987654321".into());
    let (published, log, answer) = scenario(&env, move |server, _stop, ready| {
        push_once_as_b(&server, &pki, &batch, &ready)
    });
    let e = answer.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().starts_with(
            "record 2, field 'account-id': agent 'agent-b' may not publish under account 210987654321"
        ),
        "{e:?}"
    );
    assert!(log.contains("identity_policy"), "{log}");
    assert!(
        published
            .keys()
            .all(|b| !(3_000_000..4_000_000).contains(b)),
        "nothing of the refused batch is published"
    );
    assert_good_agent_exactly_once(&published);
}

/// Pushes `batch` once as agent B (spool 5, seq 1), then marks the attack ready.
fn push_once_as_b(
    server: &Server,
    pki: &flowlog_tests::pki::TestPki,
    batch: &[FlowRecord],
    ready: &AtomicBool,
) -> Result<flowlog_transport::pb::PushReply, tonic::Status> {
    rt().block_on(async {
        let mut client = flowlog_transport::pb::ingest_client::IngestClient::new(channel(
            server,
            &ClientTls::trusting(pki),
        ));
        let answer = push(
            &mut client,
            Some(AGENT_B.1),
            push_request(AGENT_B.0, 5, 1, encode_batch(batch)),
        )
        .await;
        ready.store(true, Ordering::Relaxed);
        answer
    })
}

/// Runs futures concurrently on the current runtime and returns their outputs in order.
async fn futures_join<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + 'static,
    F::Output: 'static,
{
    let local = tokio::task::LocalSet::new();
    let handles: Vec<_> = futures.into_iter().map(|f| local.spawn_local(f)).collect();
    local
        .run_until(async move {
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.unwrap());
            }
            out
        })
        .await
}
