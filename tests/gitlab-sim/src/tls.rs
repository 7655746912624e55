//! A CA generated per simulator, and a server certificate for `localhost` and 127.0.0.1 signed
//! by it, so tests can show that TLS fails without the CA and works with it as `tls-ca-file`.
//!
//! Two more set-ups people use with gitlab-runner (its docs, `docs/configuration/tls-self-signed.md`,
//! suggest both), which Go's `crypto/x509` accepts because the server certificate is itself in
//! the trust file (`Certificate.Verify`: `opts.Roots.contains(c)`):
//! - [`TrustSetup::SelfSignedCa`]: the server presents one self-signed certificate with
//!   `CA:TRUE`, as `openssl req -x509 -newkey … -subj /CN=host -addext subjectAltName=DNS:host`
//!   makes it (OpenSSL's `v3_ca` section sets `basicConstraints = critical,CA:true`), for
//!   `localhost` only (no IP address), and that certificate is the trust file.
//! - [`TrustSetup::LeafOnly`]: the server presents the CA-signed leaf, and the trust file holds
//!   only that leaf, as `openssl s_client -showcerts` prints it first; the CA is nowhere.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};

/// What the server presents and what the trust file (`ca_pem_path`) holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TrustSetup {
    /// A leaf signed by a private CA; the trust file is the CA.
    #[default]
    PrivateCa,
    /// A self-signed `CA:TRUE` certificate for `localhost`; the trust file is that certificate.
    SelfSignedCa,
    /// The private CA's leaf; the trust file is that leaf alone.
    LeafOnly,
}

pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The PEM a client must trust (see [`TrustSetup`]).
    pub ca_pem_path: PathBuf,
    /// A client certificate and key signed by the CA, when client certificates are required.
    pub client: Option<(PathBuf, PathBuf)>,
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

pub fn generate(dir: &Path, require_client_cert: bool, trust: TrustSetup) -> std::io::Result<Tls> {
    let ca_key = KeyPair::generate().map_err(io_err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(io_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gitlab-sim test CA");
    let ca_cert = ca_params.self_signed(&ca_key).map_err(io_err)?;

    let leaf_key = KeyPair::generate().map_err(io_err)?;
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()]).map_err(io_err)?;
    leaf_params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .map_err(io_err)?;

    // The certificate the server presents, its key, and the PEM to trust.
    let (server_der, server_key, trust_pem) = match trust {
        TrustSetup::PrivateCa => (leaf.der().clone(), leaf_key, ca_cert.pem()),
        TrustSetup::LeafOnly => (leaf.der().clone(), leaf_key, leaf.pem()),
        TrustSetup::SelfSignedCa => {
            let key = KeyPair::generate().map_err(io_err)?;
            let mut params =
                CertificateParams::new(vec!["localhost".to_string()]).map_err(io_err)?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "localhost");
            let cert = params.self_signed(&key).map_err(io_err)?;
            (cert.der().clone(), key, cert.pem())
        }
    };

    std::fs::create_dir_all(dir)?;
    let ca_pem_path = dir.join(format!("gitlab-sim-ca-{}.pem", rand::random::<u32>()));
    std::fs::write(&ca_pem_path, trust_pem)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(io_err)?;
    let mut client = None;
    let builder = if require_client_cert {
        // mTLS: a client certificate signed by the same CA is required.
        let client_key = KeyPair::generate().map_err(io_err)?;
        let mut params = CertificateParams::new(vec!["runner".to_string()]).map_err(io_err)?;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&client_key, &ca_cert, &ca_key)
            .map_err(io_err)?;
        let tag = rand::random::<u32>();
        let cert_path = dir.join(format!("gitlab-sim-client-{tag}.pem"));
        let key_path = dir.join(format!("gitlab-sim-client-{tag}-key.pem"));
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, client_key.serialize_pem())?;
        client = Some((cert_path, key_path));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).map_err(io_err)?;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(io_err)?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(
            vec![server_der],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .map_err(io_err)?;
    Ok(Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca_pem_path,
        client,
    })
}
