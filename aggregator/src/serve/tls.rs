//! TLS of the ingest endpoint: the server identity and, for mTLS, the client CA.

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::config::{Problem, TlsFiles};

/// How long a client may take for the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn problem(key: &str, message: String) -> Problem {
    Problem {
        key: format!("listen.{key}"),
        message,
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, Problem> {
    std::fs::read(path).map_err(|e| problem(key, format!("cannot read {}: {e}", path.display())))
}

fn pem_error(path: &Path, e: &pem::Error) -> String {
    format!("{} is not valid PEM: {e}", path.display())
}

fn check_certificates(key: &str, path: &Path, pem: &[u8]) -> Result<(), Problem> {
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| problem(key, pem_error(path, &e)))?;
        found += 1;
    }
    if found == 0 {
        return Err(problem(
            key,
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        ));
    }
    Ok(())
}

fn check_key(path: &Path, pem: &[u8]) -> Result<(), Problem> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(_) => Ok(()),
        Err(pem::Error::NoItemsFound) => Err(problem(
            "tls_key",
            format!(
                "{} holds no PEM private key (-----BEGIN PRIVATE KEY-----)",
                path.display()
            ),
        )),
        Err(e) => Err(problem("tls_key", pem_error(path, &e))),
    }
}

/// Makes ring (what tonic's TLS uses) the process-wide rustls crypto provider. Both ring
/// and aws-lc-rs (through the AWS SDK) are linked, so rustls cannot pick one by itself.
pub fn install_crypto_provider() {
    // Fails only when a provider is already installed, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads the TLS files and builds the server's TLS config: the certificate chain and key
/// must parse and belong together; with a client CA, clients must present a certificate
/// it signed. Returns every problem, each under its `listen.*` key.
pub fn server_tls_config(files: &TlsFiles) -> Result<ServerTlsConfig, Vec<Problem>> {
    install_crypto_provider();
    let mut problems = Vec::new();
    let mut keep =
        |r: Result<Vec<u8>, Problem>, check: &dyn Fn(&[u8]) -> Result<(), Problem>| match r
            .and_then(|bytes| check(&bytes).map(|()| bytes))
        {
            Ok(bytes) => Some(bytes),
            Err(p) => {
                problems.push(p);
                None
            }
        };
    let cert = keep(read("tls_cert", &files.cert), &|pem| {
        check_certificates("tls_cert", &files.cert, pem)
    });
    let key = keep(read("tls_key", &files.key), &|pem| {
        check_key(&files.key, pem)
    });
    let client_ca = files.client_ca.as_ref().map(|ca| {
        keep(read("client_ca", ca), &|pem| {
            check_certificates("client_ca", ca, pem)
        })
    });
    let (Some(cert), Some(key)) = (cert, key) else {
        return Err(problems);
    };
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .timeout(HANDSHAKE_TIMEOUT);
    match client_ca {
        None => {}
        Some(Some(ca)) => config = config.client_ca_root(Certificate::from_pem(ca)),
        Some(None) => return Err(problems),
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    // Building the acceptor checks that the key belongs to the certificate.
    if let Err(e) = Server::builder().tls_config(config.clone()) {
        return Err(vec![problem(
            "tls_key",
            format!(
                "{} and {} are not a usable certificate and key: {}",
                files.cert.display(),
                files.key.display(),
                flowlog_runtime::error_chain(&e)
            ),
        )]);
    }
    Ok(config)
}
