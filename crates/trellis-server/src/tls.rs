//! TLS material: `trellis server init` makes a CA and a server certificate signed by it
//! (rcgen, ECDSA P-256); the server loads them into a rustls config (ring provider).

use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::auth::write_private;

/// CA certificate file name.
pub const CA_CERT: &str = "ca.pem";
/// Server certificate file name.
pub const SERVER_CERT: &str = "server.pem";
/// Server key file name.
pub const SERVER_KEY: &str = "server-key.pem";
const CA_KEY: &str = "ca-key.pem";

/// Write a new CA and a server certificate for `names` (DNS names or IP addresses) into
/// `dir`. Existing files are left alone: returns false when the CA already existed.
pub fn init(dir: &Path, names: &[String]) -> Result<bool, String> {
    if dir.join(CA_CERT).exists() {
        return Ok(false);
    }
    let err = |e: rcgen::Error| e.to_string();
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.distinguished_name
        .push(DnType::CommonName, "trellis cluster CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);

    let key = KeyPair::generate().map_err(err)?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    p.distinguished_name
        .push(DnType::CommonName, "trellis server");
    for n in names {
        p.subject_alt_names
            .push(match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into().map_err(err)?),
            });
    }
    let cert = p.signed_by(&key, &issuer).map_err(err)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    write_private(&dir.join(CA_KEY), issuer.key().serialize_pem().as_bytes())?;
    write_private(&dir.join(SERVER_KEY), key.serialize_pem().as_bytes())?;
    std::fs::write(dir.join(SERVER_CERT), cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(CA_CERT), ca_cert.pem()).map_err(|e| e.to_string())?;
    Ok(true)
}

/// The rustls server config from `dir`'s certificate and key.
pub fn server_config(dir: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join(SERVER_CERT))
        .map_err(|e| format!("{}: {e}", dir.join(SERVER_CERT).display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", dir.join(SERVER_CERT).display()))?;
    let key = PrivateKeyDer::from_pem_file(dir.join(SERVER_KEY))
        .map_err(|e| format!("{}: {e}", dir.join(SERVER_KEY).display()))?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("server certificate: {e}"))?;
    Ok(Arc::new(cfg))
}
