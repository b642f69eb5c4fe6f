//! `serve::run_with`: the server run in process, on a listener the test bound, until a
//! shutdown future the test completes. Pushes over TLS are acknowledged, and the shutdown
//! seals and publishes them before `run_with` returns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod serve_support;

use std::time::{Duration, Instant};

use flowlog_aggregator::{config, serve};
use serve_support::{ClientTls, Env, channel_at, counted, push_a, records, rt};
use tonic::codec::CompressionEncoding;

#[test]
fn a_server_in_process_serves_until_its_shutdown_future_and_publishes_what_it_acked() {
    let env = Env::tls();
    let settings = config::load(&env.config).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        serve::run_with(&settings, listener, async {
            let _ = stopped.await;
        })
    });

    let rt = rt();
    let batch = records(1, 0, 500);
    let tls = ClientTls::trusting(&env.pki);
    let reply = rt.block_on(async {
        let mut client =
            flowlog_transport::pb::ingest_client::IngestClient::new(channel_at(address, &tls))
                .accept_compressed(CompressionEncoding::Zstd);
        // The server starts in another thread: retry until it answers.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match push_a(&mut client, 1, &batch).await {
                Ok(reply) => break reply,
                Err(e) if Instant::now() < deadline => {
                    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("the server did not answer: {e}"),
            }
        }
    });
    assert!(!reply.duplicate);
    assert!(
        !server.is_finished(),
        "the server stopped before its shutdown"
    );

    stop.send(()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the server did not stop after its shutdown future completed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let summary = server.join().unwrap().unwrap();
    assert!(summary.published);
    assert_eq!(summary.stats.records_in, 500);
    assert_eq!(summary.stats.records_published, 500);
    assert_eq!(env.published(), counted(&batch));
}
