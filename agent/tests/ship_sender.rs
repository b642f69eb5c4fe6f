//! The sender against in-process aggregators (gRPC over TLS on 127.0.0.1): delivery and
//! acks, refused tokens, failover and return to the preferred endpoint, pinned batches
//! whose reply was lost, and batches refused as invalid.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::ingest::{Action, TestIngest, wait_until};
use flowlog_agent::config::{self, AgentSettings};
use flowlog_agent::metrics::{AgentMetrics, EndpointLabels};
use flowlog_agent::ship::settings::ShipSettings;
use flowlog_agent::ship::spool::Appended;
use flowlog_agent::ship::{Overflow, Shipper};
use flowlog_formats::{FlowRecord, LogStatus};
use flowlog_tests::pki::TestPki;

const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    dir: tempfile::TempDir,
    pki: TestPki,
}

impl Setup {
    fn new() -> Setup {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                std::env::var("RUST_LOG").unwrap_or_else(|_| "flowlog_agent=info".to_owned()),
            )
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::generate(&dir.path().join("pki")).unwrap();
        Setup { dir, pki }
    }

    /// Agent settings shipping to `endpoints` with token `token`; `extra` is added to
    /// `[aggregator]`.
    fn settings(
        &self,
        endpoints: &[String],
        token: &str,
        extra: &str,
    ) -> (AgentSettings, ShipSettings) {
        let token_file = self.dir.path().join("agent.token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        let path = self.dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "[flow_log]\nid = \"fl-0a1b2c3d4e5f60718\"\naccount_id = \"123456789012\"\nregion = \"eu-west-3\"\n\
                 max_aggregation_interval = \"60s\"\n\
                 [[interface]]\nname = \"eth0\"\ninterface_id = \"eni-0123456789abcdef0\"\nmac = \"02:00:00:00:00:0a\"\n\
                 [aggregator]\nendpoints = [{}]\nca_file = \"{}\"\nagent_id = \"web-01\"\ntoken_file = \"{}\"\n\
                 retry_max = \"1s\"\nconnect_timeout = \"2s\"\npush_timeout = \"2s\"\n{extra}\n\
                 [spool]\ndir = \"{}\"\n",
                list.join(", "),
                self.pki.ca.display(),
                token_file.display(),
                self.dir.path().join("spool").display(),
            ),
        )
        .unwrap();
        let settings = config::load(&path).unwrap();
        let ship = settings.ship.clone().unwrap();
        (settings, ship)
    }
}

/// `n` OK records of interval `interval` (60 s).
fn batch(interval: u64, n: u64) -> Vec<FlowRecord> {
    let t0 = 1_704_067_200 + interval * 60;
    (0..n)
        .map(|i| {
            let mut r = FlowRecord::no_data(
                Some("123456789012".into()),
                Some("eni-0123456789abcdef0".into()),
                t0 + i % 60,
                t0 + i % 60,
            );
            r.log_status = Some(LogStatus::Ok);
            r.srcport = Some(u16::try_from(i).unwrap());
            r.packets = Some(interval * 1000 + i);
            r
        })
        .collect()
}

fn append(shipper: &Shipper, records: &[FlowRecord]) -> u64 {
    match shipper
        .append(records, None, &|_| {}, Overflow::Replace, &|| false)
        .unwrap()
    {
        Appended::Spooled { seq } => seq,
        other => panic!("{other:?}"),
    }
}

fn endpoint_up(metrics: &AgentMetrics, url: &str) -> i64 {
    metrics
        .ship
        .as_ref()
        .unwrap()
        .endpoint_up
        .get_or_create(&EndpointLabels {
            endpoint: url.to_owned(),
        })
        .get()
}

fn metrics_for(ship: &ShipSettings) -> AgentMetrics {
    let urls: Vec<String> = ship.endpoints.iter().map(|e| e.url.clone()).collect();
    AgentMetrics::with_shipping(&urls)
}

#[test]
fn every_batch_arrives_over_mutual_tls_and_is_acked() {
    let setup = Setup::new();
    let mut server = TestIngest::new(&setup.pki, "t0ken").require_client_cert();
    server.start();
    let (_, ship) = setup.settings(
        &[server.url()],
        "t0ken",
        &format!(
            "client_cert = \"{}\"\nclient_key = \"{}\"\ncompression = \"gzip\"\nbatch_records = 500\n",
            setup.pki.client_cert.display(),
            setup.pki.client_key.display()
        ),
    );
    let metrics = metrics_for(&ship);
    let shipper = Shipper::start(&ship, &metrics).unwrap();
    let spool_id = shipper.spool_id();
    let mut sent = Vec::new();
    for i in 0..30 {
        let records = batch(i, 50 + i);
        let seq = append(&shipper, &records);
        sent.push((seq, records));
    }
    let left = shipper.wait_drained(Some(std::time::Instant::now() + WAIT), &|| false);
    assert_eq!(left.batches, 0, "not delivered: {left:?}");
    let left = shipper.stop().unwrap();
    assert_eq!(left.batches, 0);
    let store = server.received();
    assert_eq!(store.batches.len(), 30);
    for (seq, records) in &sent {
        assert_eq!(
            store.batches.get(&(spool_id, *seq)),
            Some(records),
            "batch {seq}"
        );
    }
    for p in &store.pushes {
        assert_eq!(p.agent_id, "web-01");
        assert_eq!(p.spool_id, spool_id);
        assert!(p.acked_below <= p.seq, "{p:?}");
        assert_eq!(p.outcome, "ok");
    }
    let text = metrics.encode();
    assert!(
        text.contains("flowlog_agent_batches_acked_total{duplicate=\"false\"} 30"),
        "{text}"
    );
    assert!(text.contains("flowlog_agent_spool_batches 0"), "{text}");
    // The spool is empty on disk: every segment deleted.
    let segments = std::fs::read_dir(&ship.spool.dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count();
    assert_eq!(segments, 0);
}

#[test]
fn a_refused_token_is_retried_and_nothing_is_lost() {
    let setup = Setup::new();
    let mut server = TestIngest::new(&setup.pki, "the-right-one");
    server.start();
    let (_, ship) = setup.settings(&[server.url()], "an-old-one", "");
    let metrics = metrics_for(&ship);
    let shipper = Shipper::start(&ship, &metrics).unwrap();
    let spool_id = shipper.spool_id();
    let records: Vec<Vec<FlowRecord>> = (0..5).map(|i| batch(i, 10)).collect();
    for r in &records {
        append(&shipper, r);
    }
    // Refused again and again (with backoff), nothing stored, nothing lost.
    assert!(wait_until(WAIT, || {
        server
            .received()
            .pushes
            .iter()
            .filter(|p| p.outcome == "unauthenticated")
            .count()
            >= 3
    }));
    assert!(server.received().batches.is_empty());
    assert_eq!(shipper.pending().batches, 5);
    let text = metrics.encode();
    assert!(
        text.contains(&format!(
            "flowlog_agent_push_failures_total{{endpoint=\"{}\",code=\"unauthenticated\"}}",
            server.url()
        )),
        "{text}"
    );
    // The aggregator learns the agent's token: everything goes through.
    server.set_token("an-old-one");
    let left = shipper.wait_drained(Some(std::time::Instant::now() + WAIT), &|| false);
    assert_eq!(left.batches, 0);
    shipper.stop().unwrap();
    let store = server.received();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(store.batches.get(&(spool_id, i as u64 + 1)), Some(r));
    }
}

#[test]
fn batches_fail_over_to_the_second_endpoint_and_come_back_to_the_first() {
    let setup = Setup::new();
    let mut first = TestIngest::new(&setup.pki, "t");
    let mut second = TestIngest::new(&setup.pki, "t");
    second.start();
    // The preferred endpoint is down at the start.
    let (_, ship) = setup.settings(&[first.url(), second.url()], "t", "");
    let metrics = metrics_for(&ship);
    let shipper = Shipper::start(&ship, &metrics).unwrap();
    let mut seqs = Vec::new();
    for i in 0..5 {
        seqs.push(append(&shipper, &batch(i, 20)));
    }
    let left = shipper.wait_drained(Some(std::time::Instant::now() + WAIT), &|| false);
    assert_eq!(left.batches, 0);
    assert_eq!(second.received().seqs(), seqs);
    assert!(first.received().pushes.is_empty());
    // The preferred endpoint comes up: the agent reconnects and returns to it.
    first.start();
    assert!(wait_until(WAIT, || endpoint_up(&metrics, &first.url()) == 1));
    let mut later = Vec::new();
    for i in 5..10 {
        later.push(append(&shipper, &batch(i, 20)));
    }
    let left = shipper.wait_drained(Some(std::time::Instant::now() + WAIT), &|| false);
    assert_eq!(left.batches, 0);
    assert_eq!(first.received().seqs(), later);
    assert_eq!(
        second.received().seqs(),
        seqs,
        "nothing more went to the second"
    );
    // The preferred endpoint goes down again: the next push finds its connection gone
    // (nothing was sent), and the second endpoint takes over.
    first.stop();
    let last = append(&shipper, &batch(10, 20));
    let left = shipper.wait_drained(Some(std::time::Instant::now() + WAIT), &|| false);
    assert_eq!(left.batches, 0);
    assert_eq!(second.received().seqs().last(), Some(&last));
    assert_eq!(endpoint_up(&metrics, &first.url()), 0);
    assert_eq!(endpoint_up(&metrics, &second.url()), 1);
    shipper.stop().unwrap();
}

#[test]
fn a_batch_whose_reply_was_lost_is_retried_at_the_same_endpoint_only() {
    let setup = Setup::new();
    let mut first = TestIngest::new(&setup.pki, "t");
    let mut second = TestIngest::new(&setup.pki, "t");
    first.start();
    second.start();
    // Batch 3's first push is stored by the first endpoint, whose reply then never comes.
    first.set_behavior(|p, before| {
        if p.seq == 3 && before == 0 {
            Action::RecordThenSleep(Duration::from_secs(60))
        } else {
            Action::Accept
        }
    });
    let (_, ship) = setup.settings(&[first.url(), second.url()], "t", "max_in_flight = 1\n");
    let metrics = metrics_for(&ship);
    let shipper = Shipper::start(&ship, &metrics).unwrap();
    assert!(wait_until(WAIT, || endpoint_up(&metrics, &first.url())
        == 1
        && endpoint_up(&metrics, &second.url()) == 1));
    let spool_id = shipper.spool_id();
    for i in 0..3 {
        append(&shipper, &batch(i, 20));
    }
    assert!(wait_until(WAIT, || first.received().seqs() == [1, 2, 3]));
    // The first endpoint crashes before replying.
    first.stop();
    first.set_behavior(|_, _| Action::Accept);
    // Batch 3 is pinned to it; new batches go to the second endpoint meanwhile.
    let pinned_gauge = || metrics.ship.as_ref().unwrap().pinned_batches.get();
    assert!(wait_until(WAIT, || pinned_gauge() == 1));
    for i in 3..6 {
        append(&shipper, &batch(i, 20));
    }
    assert!(wait_until(WAIT, || second.received().seqs() == [4, 5, 6]));
    // A few more seconds: batch 3 still waits for its endpoint, never sent elsewhere.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(shipper.pending().batches, 1);
    assert!(second.received().pushes.iter().all(|p| p.seq != 3));
    // The first endpoint is back: batch 3 is retried there and acked as a duplicate.
    first.start();
    let left = shipper.wait_drained(Some(std::time::Instant::now() + WAIT), &|| false);
    assert_eq!(left.batches, 0);
    assert_eq!(pinned_gauge(), 0);
    assert_eq!(first.received().outcomes(3), ["ok", "duplicate"]);
    assert!(second.received().pushes.iter().all(|p| p.seq != 3));
    let text = metrics.encode();
    assert!(
        text.contains("flowlog_agent_batches_acked_total{duplicate=\"true\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "flowlog_agent_push_failures_total{{endpoint=\"{}\",code=\"transport\"}} 1",
            first.url()
        )),
        "{text}"
    );
    shipper.stop().unwrap();
    // Every batch exactly once across both aggregators.
    let mut all: Vec<u64> = first.received().seqs();
    all.extend(second.received().seqs());
    all.sort_unstable();
    assert_eq!(all, [1, 2, 3, 4, 5, 6]);
    assert!(first.received().batches.keys().all(|(s, _)| *s == spool_id));
}

#[test]
fn a_reply_later_than_push_timeout_pins_the_batch_and_its_retry_is_a_duplicate() {
    let setup = Setup::new();
    let mut first = TestIngest::new(&setup.pki, "t");
    let mut second = TestIngest::new(&setup.pki, "t");
    first.start();
    second.start();
    first.set_behavior(|p, before| {
        if p.seq == 2 && before == 0 {
            Action::RecordThenSleep(Duration::from_secs(10))
        } else {
            Action::Accept
        }
    });
    let (_, ship) = setup.settings(&[first.url(), second.url()], "t", "");
    let metrics = metrics_for(&ship);
    let shipper = Shipper::start(&ship, &metrics).unwrap();
    // Both connected: the preferred one is active.
    assert!(wait_until(WAIT, || endpoint_up(&metrics, &first.url())
        == 1
        && endpoint_up(&metrics, &second.url()) == 1));
    for i in 0..4 {
        append(&shipper, &batch(i, 20));
    }
    let left = shipper.wait_drained(Some(std::time::Instant::now() + WAIT), &|| false);
    assert_eq!(left.batches, 0);
    shipper.stop().unwrap();
    assert_eq!(first.received().outcomes(2), ["ok", "duplicate"]);
    assert!(second.received().pushes.is_empty());
    let text = metrics.encode();
    assert!(
        text.contains(&format!(
            "flowlog_agent_push_failures_total{{endpoint=\"{}\",code=\"timeout\"}} 1",
            first.url()
        )),
        "{text}"
    );
    assert!(
        text.contains("flowlog_agent_batches_retried_total 1"),
        "{text}"
    );
}

#[test]
fn a_batch_refused_as_invalid_is_kept_and_retried() {
    let setup = Setup::new();
    let mut server = TestIngest::new(&setup.pki, "t");
    server.start();
    server.set_behavior(|p, before| {
        if p.seq == 2 && before < 2 {
            Action::Refuse(
                tonic::Code::InvalidArgument,
                "record 0, field 'srcport': test".into(),
            )
        } else {
            Action::Accept
        }
    });
    let (_, ship) = setup.settings(&[server.url()], "t", "");
    let metrics = metrics_for(&ship);
    let shipper = Shipper::start(&ship, &metrics).unwrap();
    for i in 0..4 {
        append(&shipper, &batch(i, 20));
    }
    // The other batches are not held up by the refused one.
    assert!(wait_until(WAIT, || server.received().seqs() == [1, 3, 4]));
    assert!(shipper.pending().batches >= 1);
    let left = shipper.wait_drained(Some(std::time::Instant::now() + WAIT), &|| false);
    assert_eq!(left.batches, 0);
    shipper.stop().unwrap();
    let store = server.received();
    assert_eq!(store.seqs(), [1, 2, 3, 4]);
    assert_eq!(
        store.outcomes(2),
        ["InvalidArgument", "InvalidArgument", "ok"]
    );
    // Retried slowly: retry_max (1 s) between the refusals.
    let at: Vec<_> = store
        .pushes
        .iter()
        .filter(|p| p.seq == 2)
        .map(|p| p.at)
        .collect();
    assert!(
        at[1] - at[0] >= Duration::from_millis(900),
        "{:?}",
        at[1] - at[0]
    );
}

#[test]
fn after_a_restart_a_batch_an_aggregator_may_hold_goes_back_to_that_aggregator_only() {
    let setup = Setup::new();
    let mut first = TestIngest::new(&setup.pki, "t");
    let mut second = TestIngest::new(&setup.pki, "t");
    first.start();
    second.start();
    // Batch 2 is stored by the first endpoint, whose reply never comes.
    first.set_behavior(|p, before| {
        if p.seq == 2 && before == 0 {
            Action::RecordThenSleep(Duration::from_secs(60))
        } else {
            Action::Accept
        }
    });
    let (_, ship) = setup.settings(&[first.url(), second.url()], "t", "max_in_flight = 1\n");
    {
        let metrics = metrics_for(&ship);
        let shipper = Shipper::start(&ship, &metrics).unwrap();
        assert!(wait_until(WAIT, || endpoint_up(&metrics, &first.url()) == 1));
        for i in 0..2 {
            append(&shipper, &batch(i, 20));
        }
        assert!(wait_until(WAIT, || first.received().seqs() == [1, 2]));
        // The agent stops (a crash would leave the same spool) with batch 2 unacked.
        let left = shipper.stop().unwrap();
        assert_eq!(left.batches, 1);
    }
    // The first aggregator is down when the agent starts again.
    first.stop();
    first.set_behavior(|_, _| Action::Accept);
    let metrics = metrics_for(&ship);
    let shipper = Shipper::start(&ship, &metrics).unwrap();
    assert_eq!(append(&shipper, &batch(2, 20)), 3);
    assert!(wait_until(WAIT, || second.received().seqs() == [3]));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        second.received().pushes.iter().all(|p| p.seq != 2),
        "batch 2 went to an aggregator that does not know it: it would be written twice"
    );
    // The first aggregator is back: batch 2 is retried there and acked as a duplicate.
    first.start();
    let left = shipper.wait_drained(Some(std::time::Instant::now() + WAIT), &|| false);
    assert_eq!(left.batches, 0);
    assert_eq!(first.received().outcomes(2), ["ok", "duplicate"]);
    shipper.stop().unwrap();
}

#[test]
fn a_restart_resends_unacked_batches_under_their_old_seq() {
    let setup = Setup::new();
    let mut server = TestIngest::new(&setup.pki, "t");
    let (_, ship) = setup.settings(&[server.url()], "t", "");
    let spool_id;
    {
        // No aggregator reachable: batches wait in the spool.
        let shipper = Shipper::start(&ship, &metrics_for(&ship)).unwrap();
        spool_id = shipper.spool_id();
        for i in 0..3 {
            append(&shipper, &batch(i, 5));
        }
        let left = shipper.stop().unwrap();
        assert_eq!(left.batches, 3);
    }
    server.start();
    let shipper = Shipper::start(&ship, &metrics_for(&ship)).unwrap();
    assert_eq!(shipper.spool_id(), spool_id);
    assert_eq!(append(&shipper, &batch(3, 5)), 4, "seqs continue");
    let left = shipper.wait_drained(Some(std::time::Instant::now() + WAIT), &|| false);
    assert_eq!(left.batches, 0);
    shipper.stop().unwrap();
    assert_eq!(server.received().seqs(), [1, 2, 3, 4]);
    assert_eq!(server.received().batches[&(spool_id, 2)], batch(1, 5));
}

#[test]
fn a_full_spool_ships_skipdata_in_place_of_what_it_could_not_keep() {
    let setup = Setup::new();
    let mut server = TestIngest::new(&setup.pki, "t");
    let (_, mut ship) = setup.settings(&[server.url()], "t", "");
    ship.spool.max_bytes = 16 << 10;
    let metrics = metrics_for(&ship);
    let shipper = Shipper::start(&ship, &metrics).unwrap();
    // No aggregator: the spool fills up.
    let fill = |r: &mut FlowRecord| r.region = Some("eu-west-3".into());
    let mut kept = 0;
    let mut dropped = 0;
    for i in 0..40 {
        match shipper
            .append(&batch(i, 100), None, &fill, Overflow::Replace, &|| false)
            .unwrap()
        {
            Appended::Spooled { .. } => kept += 1,
            Appended::Replaced { dropped: n, .. } => dropped += n,
        }
    }
    assert!(kept > 0 && dropped > 0, "kept {kept}, dropped {dropped}");
    let text = metrics.encode();
    assert!(
        text.contains(&format!(
            "flowlog_agent_spool_dropped_records_total {dropped}"
        )),
        "{text}"
    );
    server.start();
    let left = shipper.wait_drained(Some(std::time::Instant::now() + WAIT), &|| false);
    assert_eq!(left.batches, 0);
    shipper.stop().unwrap();
    let store = server.received();
    assert_eq!(
        store.batches.len(),
        40,
        "every batch, kept or replaced, arrives"
    );
    let skipdata: Vec<&FlowRecord> = store
        .batches
        .values()
        .flatten()
        .filter(|r| r.log_status == Some(LogStatus::SkipData))
        .collect();
    assert_eq!(
        skipdata.len() as u64,
        dropped / 100,
        "one per interface and lost batch"
    );
    assert!(
        skipdata
            .iter()
            .all(|r| r.region.as_deref() == Some("eu-west-3"))
    );
    let ok: usize = store
        .batches
        .values()
        .flatten()
        .filter(|r| r.log_status == Some(LogStatus::Ok))
        .count();
    assert_eq!(ok, kept * 100);
}
