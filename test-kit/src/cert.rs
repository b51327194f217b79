//! Self-signed test certificates, as relay-io's TLS listener and a
//! client's root store take them.

use std::sync::{Arc, OnceLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A fresh self-signed certificate and its key.
pub struct TestCert {
    /// A TLS server configuration serving it (relay-io's `IoConfig.tls`).
    pub server_config: Arc<rustls::ServerConfig>,
    /// The certificate, for a client's root store.
    pub der: CertificateDer<'static>,
    /// The certificate as PEM (a CA file for a client, `--tls-cert`).
    pub cert_pem: String,
    /// The private key as PEM (`--tls-key`).
    pub key_pem: String,
}

/// A fresh self-signed certificate for these DNS names or IP addresses.
pub fn certificate(names: &[&str]) -> TestCert {
    let names = names.iter().map(|&n| n.to_owned()).collect::<Vec<_>>();
    let ck = rcgen::generate_simple_self_signed(names).expect("a self-signed certificate");
    let der = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let server_config = relay_io::tls::server_config(vec![der.clone()], key).expect("a TLS server configuration");
    TestCert { server_config, der, cert_pem: ck.cert.pem(), key_pem: ck.signing_key.serialize_pem() }
}

/// The process's self-signed certificate for "localhost" (made once, the
/// same at every call, so that a server and its clients agree): the
/// server's configuration and the certificate for a client's root store.
pub fn test_certificate() -> (Arc<rustls::ServerConfig>, CertificateDer<'static>) {
    static CERT: OnceLock<TestCert> = OnceLock::new();
    let c = CERT.get_or_init(|| certificate(&["localhost"]));
    (c.server_config.clone(), c.der.clone())
}

/// A TLS client configuration that trusts `root` alone.
pub fn client_config(root: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).expect("a root certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}
