//! `flowlog-aggregator serve` security: bearer tokens (refusals logged with the peer and
//! never the token), SIGHUP reloads of the tokens file, TLS and mTLS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod serve_support;

use std::time::Duration;

use flowlog_transport::encode_batch;
use serve_support::{
    AGENT_A, AGENT_B, ClientTls, Env, client, counted, push, push_a, push_request, records, rt,
    tls_listen,
};
use tonic::Code;

const WRONG_TOKEN: &str = "not-a-token-0000";

#[test]
fn tokens_are_checked_and_refusals_are_logged_with_the_peer_but_not_the_token() {
    let env = Env::tls();
    let server = env.serve();
    let rt = rt();
    let batch = records(1, 0, 10);
    rt.block_on(async {
        let mut c = client(&server, &ClientTls::trusting(&env.pki)).await;
        let request = || push_request(AGENT_A.0, 1, 1, encode_batch(&batch));
        let e = push(&mut c, None, request()).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        let e = push(&mut c, Some(WRONG_TOKEN), request())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        // Agent B's token used as agent A.
        let e = push(&mut c, Some(AGENT_B.1), request()).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(!e.message().contains(AGENT_B.1), "{e:?}");
        // The right token on the same channel.
        assert!(
            !push(&mut c, Some(AGENT_A.1), request())
                .await
                .unwrap()
                .duplicate
        );
    });
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused a push"))
        .collect();
    assert_eq!(refusals.len(), 3, "{log}");
    for (line, reason) in refusals
        .iter()
        .zip(["missing", "unknown", "agent_mismatch"])
    {
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
        assert!(
            line.contains(&format!("reason=\"{reason}\""))
                || line.contains(&format!("reason={reason}")),
            "{line}"
        );
    }
    for token in [WRONG_TOKEN, AGENT_A.1, AGENT_B.1] {
        assert!(!log.contains(token), "the log shows a token:\n{log}");
    }
    // Nothing of the refused pushes was written.
    assert_eq!(env.published(), counted(&batch));
}

#[test]
fn sighup_reloads_the_tokens_and_a_bad_file_keeps_the_old_ones() {
    let env = Env::tls();
    let mut server = env.serve();
    let rt = rt();
    let new_token = "tok-a-rotated-5555";
    rt.block_on(async {
        let mut c = client(&server, &ClientTls::trusting(&env.pki)).await;
        assert!(push_a(&mut c, 1, &records(1, 0, 5)).await.is_ok());

        // Agent A gets a new token, agent B is removed.
        std::fs::write(&env.tokens, format!("{} {new_token}\n", AGENT_A.0)).unwrap();
        server.signal("HUP");
        server.wait_for_log("reloaded the tokens file", Duration::from_secs(30));
        let e = push_a(&mut c, 2, &records(1, 100, 5)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "the old token is refused");
        let b = push(
            &mut c,
            Some(AGENT_B.1),
            push_request(AGENT_B.0, 1, 1, encode_batch(&records(2, 0, 5))),
        )
        .await
        .unwrap_err();
        assert_eq!(
            b.code(),
            Code::Unauthenticated,
            "the removed agent is refused"
        );
        let request = push_request(AGENT_A.0, 1, 2, encode_batch(&records(1, 100, 5)));
        assert!(push(&mut c, Some(new_token), request).await.is_ok());

        // A broken file: refused with its line named, the tokens in force stay.
        std::fs::write(&env.tokens, format!("# rotated\n{}\n", AGENT_A.0)).unwrap();
        server.signal("HUP");
        let line = server.wait_for_log("cannot reload the tokens file", Duration::from_secs(30));
        assert!(line.contains("line 2"), "{line}");
        assert!(line.contains("ERROR"), "{line}");
        let request = push_request(AGENT_A.0, 1, 3, encode_batch(&records(1, 200, 5)));
        assert!(push(&mut c, Some(new_token), request).await.is_ok());
    });
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    assert!(!log.contains(new_token), "{log}");
    assert_eq!(env.published().len(), 15);
}

#[test]
fn a_plaintext_client_cannot_talk_to_the_tls_port() {
    let env = Env::tls();
    let server = env.serve();
    let rt = rt();
    let good = records(1, 1000, 5);
    rt.block_on(async {
        let mut c = client(&server, &ClientTls::default()).await;
        let e = push_a(&mut c, 1, &records(1, 0, 5)).await.unwrap_err();
        assert_ne!(e.code(), Code::Ok);
        // A client that does not trust the server's CA fails the handshake too.
        let untrusting = ClientTls {
            ca: Some(env.pki.other_ca.clone()),
            identity: None,
        };
        let mut c = client(&server, &untrusting).await;
        assert!(push_a(&mut c, 1, &records(1, 0, 5)).await.is_err());
        // The server carries on; the failed attempts left nothing behind (seq 1 is new).
        let mut c = client(&server, &ClientTls::trusting(&env.pki)).await;
        assert!(!push_a(&mut c, 1, &good).await.unwrap().duplicate);
    });
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    assert!(!log.contains("refused a push"), "{log}");
    assert_eq!(env.published(), counted(&good));
}

#[test]
fn mtls_requires_a_client_certificate_signed_by_the_client_ca() {
    let env = Env::new(|pki| format!("{}client_ca = \"{}\"\n", tls_listen(pki), pki.ca.display()));
    let mut server = env.serve();
    let line = server.wait_for_log(": listening address=", Duration::from_secs(5));
    assert!(line.contains("mtls=true"), "{line}");
    let rt = rt();
    let batch = records(1, 0, 5);
    rt.block_on(async {
        let trusting = ClientTls::trusting(&env.pki);
        let mut c = client(&server, &trusting).await;
        assert!(
            push_a(&mut c, 1, &batch).await.is_err(),
            "no client certificate"
        );
        let stranger = trusting
            .clone()
            .with_identity(&env.pki.other_client_cert, &env.pki.other_client_key);
        let mut c = client(&server, &stranger).await;
        assert!(
            push_a(&mut c, 1, &batch).await.is_err(),
            "a client certificate of another CA"
        );
        let member = trusting.with_identity(&env.pki.client_cert, &env.pki.client_key);
        let mut c = client(&server, &member).await;
        assert!(!push_a(&mut c, 1, &batch).await.unwrap().duplicate);
    });
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    assert_eq!(env.published(), counted(&batch));
}
