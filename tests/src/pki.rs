//! A throw-away PKI for TLS tests: one CA, a server certificate for `localhost` /
//! `127.0.0.1`, and client certificates, written as PEM files into a directory.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// PEM files of a test PKI.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate (what agents trust, and `client_ca` for mTLS).
    pub ca: PathBuf,
    /// The server certificate (SANs `localhost`, `127.0.0.1`, `::1`).
    pub server_cert: PathBuf,
    /// The server key.
    pub server_key: PathBuf,
    /// A client certificate signed by the CA (for mTLS).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// A second CA, unrelated to the first (for "untrusted" cases).
    pub other_ca: PathBuf,
    /// A client certificate signed by the other CA.
    pub other_client_cert: PathBuf,
    /// Its key.
    pub other_client_key: PathBuf,
}

fn ca(name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    purpose: ExtendedKeyUsagePurpose,
    dir: &Path,
    stem: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let mut params =
        CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
    params
        .distinguished_name
        .push(DnType::CommonName, names.first().copied().unwrap_or(stem));
    params.extended_key_usages = vec![purpose];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    std::fs::write(&cert_path, cert.pem()).with_context(|| cert_path.display().to_string())?;
    std::fs::write(&key_path, key.serialize_pem())
        .with_context(|| key_path.display().to_string())?;
    Ok((cert_path, key_path))
}

impl TestPki {
    /// Generates the PKI into `dir` (created if missing).
    pub fn generate(dir: &Path) -> anyhow::Result<TestPki> {
        std::fs::create_dir_all(dir)?;
        let root = ca("flowlog test CA")?;
        let other = ca("unrelated test CA")?;
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, root.pem())?;
        let other_ca = dir.join("other-ca.pem");
        std::fs::write(&other_ca, other.pem())?;
        let (server_cert, server_key) = leaf(
            &root,
            &["localhost", "127.0.0.1", "::1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            dir,
            "server",
        )?;
        let (client_cert, client_key) = leaf(
            &root,
            &["agent-client"],
            ExtendedKeyUsagePurpose::ClientAuth,
            dir,
            "client",
        )?;
        let (other_client_cert, other_client_key) = leaf(
            &other,
            &["stranger"],
            ExtendedKeyUsagePurpose::ClientAuth,
            dir,
            "other-client",
        )?;
        Ok(TestPki {
            ca: ca_path,
            server_cert,
            server_key,
            client_cert,
            client_key,
            other_ca,
            other_client_cert,
            other_client_key,
        })
    }
}
