//! `flowlog-tests`: cross-crate end-to-end tests and the harness other crates' tests use.
//!
//! - [`s3`]: an S3-compatible server on 127.0.0.1 (moto in server mode, signature
//!   checking on) started per test process, helpers to read what landed in it, and a
//!   [`s3::FlakyProxy`] that simulates an endpoint going down and coming back.
//! - [`pki`]: a throw-away CA with server and client certificates for TLS tests.
//!
//! The Python side lives in the venv `scripts/setup-test-env.sh` creates (`$FLOWLOG_VENV`,
//! by default `target/test-venv`); the integration tests under `tests/` use it too.

pub mod pki;
pub mod s3;
