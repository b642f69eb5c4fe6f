//! `serve` and `check-config` refuse unusable `[listen]` settings with every problem
//! listed, and `check-config` still accepts import-only configs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod serve_support;

use std::process::{Command, Output};

use serve_support::{BIN, Env, tls_listen};

fn run(args: &[&str], config: &std::path::Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const IMPORT_ONLY: &str = "[flow_log]\nid = \"fl-0123456789abcdef0\"\naccount_id = \"123456789012\"\nregion = \"eu-west-3\"\n";

#[test]
fn serve_without_listen_is_refused_and_check_config_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("import.toml");
    std::fs::write(&config, IMPORT_ONLY).unwrap();
    let out = run(&["serve"], &config);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("listen: serve needs a [listen] section"),
        "{}",
        stderr(&out)
    );
    let out = run(&["check-config"], &config);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn every_listen_problem_is_listed_at_once() {
    let env = Env::new(|pki| {
        format!(
            "tls_cert = \"{0}/missing.pem\"\ntls_key = \"{0}/missing.key\"\nclient_ca = \"{1}\"\npush_timeout = \"eventually\"\n",
            pki.ca.parent().unwrap().display(),
            pki.server_key.display()
        )
    });
    std::fs::write(
        &env.tokens,
        "agent-a tok-1-0123456789abc\nagent-a tok-2-0123456789abc\nagent-b\nagent-c tok-1-0123456789abc\nagent-d short\n",
    )
    .unwrap();
    for args in [
        &["serve"][..],
        &["check-config"],
        &["serve", "--check-config"],
    ] {
        let out = run(args, &env.config);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
        let shown = stderr(&out);
        for expected in [
            "listen.tls_cert: cannot read ",
            "missing.pem",
            "listen.tls_key: cannot read ",
            "listen.client_ca: ",
            "holds no PEM certificate",
            "listen.push_timeout: 'eventually' is not a duration",
            "line 2: agent 'agent-a' is already listed on line 1",
            "line 3: agent 'agent-b' has no token",
            "line 4: agent 'agent-c' has the same token as 'agent-a' on line 1",
            "line 5: the token of 'agent-d' is 5 characters long; at least 16 are required",
        ] {
            assert!(
                shown.contains(expected),
                "{args:?}: {expected:?} missing in\n{shown}"
            );
        }
        assert!(!shown.contains("tok-1"), "tokens are never shown:\n{shown}");
    }
    assert!(
        !env.state.exists(),
        "serve stopped before touching the state"
    );
}

#[test]
fn tls_problems_missing_tokens_file_and_insecure_conflicts() {
    // A key that does not belong to the certificate; no tokens file.
    let env = Env::new(|pki| {
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            pki.server_cert.display(),
            pki.client_key.display()
        )
    });
    std::fs::remove_file(&env.tokens).unwrap();
    let out = run(&["serve"], &env.config);
    assert_eq!(out.status.code(), Some(64));
    let shown = stderr(&out);
    assert!(
        shown.contains("listen.tls_key: ")
            && shown.contains("are not a usable certificate and key"),
        "{shown}"
    );
    assert!(
        shown.contains("listen.tokens_file: cannot read") && shown.contains("tokens"),
        "{shown}"
    );

    // TLS keys with insecure = true; no tls keys without it.
    let env = Env::new(|pki| format!("insecure = true\n{}", tls_listen(pki)));
    let out = run(&["check-config"], &env.config);
    assert_eq!(out.status.code(), Some(64));
    let shown = stderr(&out);
    assert!(
        shown.contains("listen.tls_cert: is not used with insecure = true"),
        "{shown}"
    );
    let env = Env::new(|_| String::new());
    let out = run(&["check-config"], &env.config);
    let shown = stderr(&out);
    assert!(shown.contains("listen.tls_cert: is required"), "{shown}");
    assert!(shown.contains("listen.tls_key: is required"), "{shown}");

    // And a good one.
    let env = Env::tls();
    let out = run(&["check-config"], &env.config);
    assert!(out.status.success(), "{}", stderr(&out));
}
