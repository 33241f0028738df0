//! Certificates: a `kubernetes.io/tls` Secret's PEM turned into a rustls key pair (checked
//! to match), and the SNI resolver the listeners use. The resolver reads an immutable map
//! swapped in whole, so a certificate change never touches an open connection.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate or key cannot be used; the `field` is the Secret's data key.
#[derive(Debug, thiserror::Error)]
#[error("data[{field:?}]: {message}")]
pub struct CertError {
    /// `tls.crt` or `tls.key`.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

/// The data key of the certificate chain.
pub const CERT_KEY: &str = "tls.crt";
/// The data key of the private key.
pub const KEY_KEY: &str = "tls.key";

/// Parse a PEM certificate chain and its PEM private key; refuse a key that is not the
/// certificate's.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, CertError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError {
            field: CERT_KEY,
            message: format!("not a PEM certificate chain: {e}"),
        })?;
    if certs.is_empty() {
        return Err(CertError {
            field: CERT_KEY,
            message: "holds no PEM CERTIFICATE block".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError {
        field: KEY_KEY,
        message: format!("not a PEM private key: {e}"),
    })?;
    let signer = any_supported_type(&key).map_err(|e| CertError {
        field: KEY_KEY,
        message: format!("unsupported private key: {e}"),
    })?;
    let ck = CertifiedKey::new(certs, signer);
    ck.keys_match().map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => CertError {
            field: KEY_KEY,
            message: "does not match the certificate in tls.crt".into(),
        },
        e => CertError {
            field: CERT_KEY,
            message: format!("cannot be read: {e}"),
        },
    })?;
    Ok(ck)
}

/// Certificates by host name: exact names and `*.` wildcards (one label), plus the
/// default certificate for names that match none (and clients that send no SNI).
#[derive(Debug, Default, Clone)]
pub struct CertTable {
    /// Exact host → key.
    pub exact: HashMap<String, Arc<CertifiedKey>>,
    /// Domain after `*.` → key.
    pub wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For everything else.
    pub default: Option<Arc<CertifiedKey>>,
}

impl CertTable {
    /// The key for `sni` (lower-case).
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            if let Some((_, domain)) = name.split_once('.') {
                if let Some(k) = self.wildcard.get(domain) {
                    return Some(k.clone());
                }
            }
        }
        self.default.clone()
    }

    /// Whether any host has a certificate (the redirect to HTTPS is for those).
    pub fn covers(&self, host: &str) -> bool {
        self.exact.contains_key(host)
            || host
                .split_once('.')
                .is_some_and(|(_, d)| self.wildcard.contains_key(d))
    }
}

/// The listeners' certificate resolver: reads the current [`CertTable`].
#[derive(Debug, Default)]
pub struct SniResolver {
    table: ArcSwap<CertTable>,
}

impl SniResolver {
    /// Replace the certificates (connections already up keep theirs).
    pub fn set(&self, table: CertTable) {
        self.table.store(Arc::new(table));
    }

    /// The current certificates.
    pub fn current(&self) -> Arc<CertTable> {
        self.table.load_full()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.table.load().lookup(hello.server_name())
    }
}

/// A rustls server config over `resolver`, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(resolver: Arc<SniResolver>) -> rustls::ServerConfig {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg
}

/// A self-signed certificate for names nothing else covers (as ingress-nginx's "fake
/// certificate"): clients see a TLS error rather than a closed connection.
pub fn self_signed() -> Result<CertifiedKey, CertError> {
    let err = |e: rcgen::Error| CertError {
        field: CERT_KEY,
        message: format!("generating the default certificate: {e}"),
    };
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut p =
        rcgen::CertificateParams::new(vec!["ingress.trellis.invalid".to_string()]).map_err(err)?;
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        "Trellis Ingress Default Certificate",
    );
    let cert = p.self_signed(&key).map_err(err)?;
    certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
}
