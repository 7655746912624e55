//! TLS trust built the way gitlab-runner builds it, on rustls.
//!
//! gitlab-runner (gitlab-org/gitlab-runner `network/client.go`, `newClient`, `findCertificate`,
//! `addTLSCA`, `addTLSAuth`):
//! - the CA file is `tls-ca-file`, else `<host>.crt` in its certificate directory (`<host>` is the
//!   URL's host without the port); the client certificate and key are `tls-cert-file` /
//!   `tls-key-file`, else `<host>.auth.crt` / `<host>.auth.key` there. Each is looked up on its
//!   own. The directory is `certs/` under gitlab-runner's default config directory
//!   (`commands/config.go` `getDefaultCertificateDirectory`): `/etc/gitlab-runner/certs` as root,
//!   `~/.gitlab-runner/certs` otherwise.
//! - the certificates of the CA file are *added* to the system pool (`x509.SystemCertPool`).
//!   A CA file that does not exist is skipped silently, one that cannot be read or holds no PEM
//!   is logged and skipped: the system pool is used. A client key pair that cannot be loaded is
//!   logged and left out.
//! - Go's `crypto/x509` `Certificate.Verify` accepts a server certificate that is itself in the
//!   pool (`opts.Roots.contains(c)`: byte-for-byte equal) as a chain of one, without building a
//!   path: a self-signed certificate with `CA:TRUE` (what `openssl req -x509` makes) or the leaf
//!   that `openssl s_client -showcerts` prints first both work as `tls-ca-file`. Before that it
//!   still checks the validity period (`isValid`) and the host name (`VerifyHostname`, SANs only
//!   since Go 1.15), and after it the extended key usage (`checkChainForKeyUsage`: serverAuth or
//!   any, or no EKU extension at all).
//!
//! rustls refuses both certificates (`CaUsedAsEndEntity`, `UnknownIssuer`), so [`Verifier`]
//! accepts an end-entity certificate equal to one in the trust file after the same three checks
//! Go makes, and hands everything else to rustls' WebPKI verifier. Verification is never off.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::Error;

/// gitlab-runner's certificate directory for a process of this kind (see the module docs).
pub fn gitlab_runner_certs_dir(is_root: bool, home: Option<&Path>) -> Option<PathBuf> {
    if is_root {
        Some(PathBuf::from("/etc/gitlab-runner/certs"))
    } else {
        home.map(|h| h.join(".gitlab-runner/certs"))
    }
}

/// TLS files of a `[[runners]]` entry (`tls-ca-file`, `tls-cert-file`, `tls-key-file`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsFiles {
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

/// The files a client for `host` uses: the entry's own, else the first `<host>.crt`,
/// `<host>.auth.crt`, `<host>.auth.key` found in `dirs` (each on its own, as `findCertificate`).
pub fn resolve(files: &TlsFiles, host: &str, dirs: &[PathBuf]) -> TlsFiles {
    let find = |name: String| dirs.iter().map(|d| d.join(&name)).find(|p| p.exists());
    TlsFiles {
        ca_file: files
            .ca_file
            .clone()
            .or_else(|| find(format!("{host}.crt"))),
        cert_file: files
            .cert_file
            .clone()
            .or_else(|| find(format!("{host}.auth.crt"))),
        key_file: files
            .key_file
            .clone()
            .or_else(|| find(format!("{host}.auth.key"))),
    }
}

/// Why a TLS file is not used; the connection goes on with the system's CAs (or without a client
/// certificate), as gitlab-runner's does.
pub fn problems(files: &TlsFiles) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(ca) = &files.ca_file {
        if let Err(why) = read_certs(ca) {
            out.push(format!(
                "tls-ca-file `{}` {why}; the system's CAs are used instead",
                ca.display()
            ));
        }
    }
    if let (Some(cert), Some(key)) = (&files.cert_file, &files.key_file) {
        if let Err(why) = read_identity(cert, key) {
            out.push(format!(
                "the client certificate `{}` / `{}` {why}; no client certificate is sent",
                cert.display(),
                key.display()
            ));
        }
    }
    out
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = match fs_err::read(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("does not exist".into()),
        Err(e) => return Err(format!("cannot be read: {}", e.kind())),
    };
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn read_identity(cert: &Path, key: &Path) -> Result<Identity, String> {
    let certs = read_certs(cert)?;
    let key = fs_err::read(key).map_err(|e| format!("key cannot be read: {}", e.kind()))?;
    let key =
        PrivateKeyDer::from_pem_slice(&key).map_err(|_| "key holds no PEM key".to_string())?;
    Ok((certs, key))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration for `files` (already resolved): system roots plus the CA file, the
/// exact-match rule, and the client certificate. Problems with the files are warnings (see
/// [`problems`]); only a broken TLS library set-up is an error.
pub fn client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, Error> {
    let setup = |e: rustls::Error| Error::Setup(format!("TLS set-up: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    // The system's CAs, as `x509.SystemCertPool`; Mozilla's as well, as runner-medic always had
    // (a host without a CA bundle would otherwise trust nothing).
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut pinned = Vec::new();
    if let Some(ca) = &files.ca_file {
        match read_certs(ca) {
            Ok(certs) => {
                roots.add_parsable_certificates(certs.iter().cloned());
                pinned = certs;
            }
            Err(why) => {
                tracing::warn!(file = %ca.display(), "tls-ca-file {why}; using the system's CAs");
            }
        }
    }
    let provider = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::Setup(format!("TLS set-up: {e}")))?;
    let verifier = Arc::new(Verifier {
        pinned,
        inner,
        provider: provider.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(setup)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let identity = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => match read_identity(cert, key) {
            Ok(id) => Some(id),
            Err(why) => {
                tracing::warn!(cert = %cert.display(), key = %key.display(), "client certificate {why}; none is sent");
                None
            }
        },
        _ => None,
    };
    match identity {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key).map_err(|e| {
            Error::Setup(format!(
                "the client certificate and key do not fit together: {e}"
            ))
        }),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// WebPKI, plus Go's rule that a server certificate found byte-for-byte in the trust file is
/// trusted as it is (after the validity, host name and key usage checks Go makes).
#[derive(Debug)]
pub struct Verifier {
    pinned: Vec<CertificateDer<'static>>,
    inner: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
}

impl Verifier {
    #[cfg(test)]
    fn new(pinned: Vec<CertificateDer<'static>>) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(pinned.iter().cloned());
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = provider();
        Self {
            pinned,
            inner: WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .expect("roots"),
            provider,
        }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            check_pinned(end_entity, server_name, now)?;
            return Ok(ServerCertVerified::assertion());
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Go's checks of a certificate it trusts by exact match: validity period, host name (SANs
/// only), extended key usage.
fn check_pinned(
    der: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    use rustls::CertificateError as E;
    let bad = || rustls::Error::InvalidCertificate(E::BadEncoding);
    let parsed = Parsed::from_der(der.as_ref()).ok_or_else(bad)?;
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if now < parsed.not_before.timestamp() {
        return Err(rustls::Error::InvalidCertificate(E::NotValidYet));
    }
    if now > parsed.not_after.timestamp() {
        return Err(rustls::Error::InvalidCertificate(E::Expired));
    }
    let cert = webpki::EndEntityCert::try_from(der).map_err(|_| bad())?;
    cert.verify_is_valid_for_subject_name(server_name)
        .map_err(|_| rustls::Error::InvalidCertificate(E::NotValidForName))?;
    if !parsed.server_auth {
        return Err(rustls::Error::InvalidCertificate(E::InvalidPurpose));
    }
    Ok(())
}

/// The fields of an X.509 certificate the exact-match rule needs, read with a minimal DER
/// reader (webpki keeps them private).
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    /// No extended key usage extension, or one that allows serverAuth or any purpose.
    server_auth: bool,
}

/// One DER element: (tag, contents, the rest after it).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const OID_EKU: &[u8] = &[0x55, 0x1d, 0x25];
const OID_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
const OID_ANY_EKU: &[u8] = &[0x55, 0x1d, 0x25, 0x00];

impl Parsed {
    fn from_der(der: &[u8]) -> Option<Self> {
        let (0x30, cert, _) = tlv(der)? else {
            return None;
        };
        let (0x30, tbs, _) = tlv(cert)? else {
            return None;
        };
        let mut rest = tbs;
        let (tag, _, after) = tlv(rest)?;
        if tag == 0xa0 {
            rest = after; // [0] version
        }
        // serialNumber, signature, issuer
        for _ in 0..3 {
            rest = tlv(rest)?.2;
        }
        let (0x30, validity, after) = tlv(rest)? else {
            return None;
        };
        let (t1, before, v) = tlv(validity)?;
        let (t2, after_time, _) = tlv(v)?;
        let not_before = der_time(t1, before)?;
        let not_after = der_time(t2, after_time)?;
        // subject, subjectPublicKeyInfo
        rest = tlv(tlv(after)?.2)?.2;
        let mut server_auth = true;
        while !rest.is_empty() {
            let (tag, contents, next) = tlv(rest)?;
            rest = next;
            if tag != 0xa3 {
                continue; // [1], [2] unique ids
            }
            let (0x30, mut exts, _) = tlv(contents)? else {
                return None;
            };
            while !exts.is_empty() {
                let (_, ext, next) = tlv(exts)?;
                exts = next;
                let (0x06, oid, mut body) = tlv(ext)? else {
                    return None;
                };
                if oid != OID_EKU {
                    continue;
                }
                let (tag, _, after_crit) = tlv(body)?;
                if tag == 0x01 {
                    body = after_crit; // critical
                }
                let (0x04, value, _) = tlv(body)? else {
                    return None;
                };
                let (0x30, mut oids, _) = tlv(value)? else {
                    return None;
                };
                server_auth = false;
                while !oids.is_empty() {
                    let (_, purpose, next) = tlv(oids)?;
                    oids = next;
                    if purpose == OID_SERVER_AUTH || purpose == OID_ANY_EKU {
                        server_auth = true;
                    }
                }
            }
        }
        Some(Self {
            not_before,
            not_after,
            server_auth,
        })
    }
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn der_time(tag: u8, value: &[u8]) -> Option<DateTime<Utc>> {
    let text = std::str::from_utf8(value).ok()?;
    let text = text.strip_suffix('Z')?;
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let yy: i32 = text[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        (0x18, 14) => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let n = |i: usize| rest[i..i + 2].parse::<u32>().ok();
    NaiveDate::from_ymd_opt(year, n(0)?, n(2)?)?
        .and_hms_opt(n(4)?, n(6)?, n(8)?)
        .map(|d| d.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };

    fn now() -> UnixTime {
        UnixTime::now()
    }

    fn name(n: &str) -> ServerName<'static> {
        ServerName::try_from(n.to_string()).unwrap()
    }

    fn self_signed(
        ca: bool,
        sans: &[&str],
        eku: Vec<ExtendedKeyUsagePurpose>,
    ) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(sans.iter().map(|s| (*s).to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(DnType::CommonName, "test");
        if ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        p.extended_key_usages = eku;
        p.self_signed(&key).unwrap().der().clone()
    }

    /// A leaf signed by a CA that is not trusted, as `openssl s_client -showcerts` prints it.
    fn leaf_of_untrusted_ca() -> CertificateDer<'static> {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        CertificateParams::new(vec!["gitlab.example".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap()
            .der()
            .clone()
    }

    #[test]
    fn a_self_signed_ca_cert_in_the_trust_file_is_accepted_by_exact_match() {
        let cert = self_signed(true, &["gitlab.example"], vec![]);
        // rustls alone refuses it.
        let webpki = Verifier::new(vec![]);
        assert!(webpki
            .verify_server_cert(&cert, &[], &name("gitlab.example"), &[], now())
            .is_err());
        let v = Verifier::new(vec![cert.clone()]);
        v.verify_server_cert(&cert, &[], &name("gitlab.example"), &[], now())
            .unwrap();
    }

    #[test]
    fn a_leaf_in_the_trust_file_is_accepted_without_its_ca() {
        let leaf = leaf_of_untrusted_ca();
        assert!(Verifier::new(vec![])
            .verify_server_cert(&leaf, &[], &name("gitlab.example"), &[], now())
            .is_err());
        Verifier::new(vec![leaf.clone()])
            .verify_server_cert(&leaf, &[], &name("gitlab.example"), &[], now())
            .unwrap();
    }

    #[test]
    fn the_exact_match_still_checks_the_host_name() {
        let cert = self_signed(true, &["gitlab.example"], vec![]);
        let v = Verifier::new(vec![cert.clone()]);
        let err = v
            .verify_server_cert(&cert, &[], &name("other.example"), &[], now())
            .unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
            ),
            "{err}"
        );
        let ip = ServerName::try_from("127.0.0.1").unwrap();
        assert!(v.verify_server_cert(&cert, &[], &ip, &[], now()).is_err());
    }

    #[test]
    fn the_exact_match_still_checks_the_validity_period() {
        let cert = self_signed(false, &["gitlab.example"], vec![]);
        let v = Verifier::new(vec![cert.clone()]);
        let parsed = Parsed::from_der(cert.as_ref()).unwrap();
        let later = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(parsed.not_after.timestamp()).unwrap() + 10,
        ));
        let err = v
            .verify_server_cert(&cert, &[], &name("gitlab.example"), &[], later)
            .unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
            ),
            "{err}"
        );
        let earlier = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(parsed.not_before.timestamp()).unwrap() - 10,
        ));
        assert!(v
            .verify_server_cert(&cert, &[], &name("gitlab.example"), &[], earlier)
            .is_err());
    }

    #[test]
    fn the_exact_match_still_checks_the_key_usage() {
        let client_only = self_signed(
            false,
            &["gitlab.example"],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        let v = Verifier::new(vec![client_only.clone()]);
        assert!(v
            .verify_server_cert(&client_only, &[], &name("gitlab.example"), &[], now())
            .is_err());
        let server = self_signed(
            false,
            &["gitlab.example"],
            vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ],
        );
        Verifier::new(vec![server.clone()])
            .verify_server_cert(&server, &[], &name("gitlab.example"), &[], now())
            .unwrap();
    }

    #[test]
    fn a_cert_not_in_the_trust_file_goes_to_webpki() {
        let trusted = self_signed(true, &["gitlab.example"], vec![]);
        let other = self_signed(true, &["gitlab.example"], vec![]);
        let v = Verifier::new(vec![trusted]);
        assert!(v
            .verify_server_cert(&other, &[], &name("gitlab.example"), &[], now())
            .is_err());
    }

    #[test]
    fn der_times_and_lengths() {
        let utc = |s: &str| der_time(0x17, s.as_bytes());
        assert_eq!(
            utc("491231235959Z").unwrap().to_rfc3339(),
            "2049-12-31T23:59:59+00:00"
        );
        assert_eq!(
            utc("500101000000Z").unwrap().to_rfc3339(),
            "1950-01-01T00:00:00+00:00"
        );
        assert_eq!(
            der_time(0x18, b"99991231235959Z").unwrap().to_rfc3339(),
            "9999-12-31T23:59:59+00:00"
        );
        assert!(utc("4912312359Z").is_none());
        assert!(utc("491331235959Z").is_none());
        assert!(der_time(0x18, b"491231235959Z").is_none());
        // Long-form length, and truncated input.
        let long = [&[0x04, 0x81, 0x80][..], &[7u8; 128]].concat();
        assert_eq!(tlv(&long).unwrap().1.len(), 128);
        assert!(tlv(&long[..100]).is_none());
        assert!(tlv(&[0x04]).is_none());
        assert!(Parsed::from_der(b"\x30\x03\x02\x01\x00").is_none());
    }

    #[test]
    fn files_are_found_in_the_certs_dirs_each_on_its_own() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(b.path().join("gitlab.example.crt"), "x").unwrap();
        std::fs::write(a.path().join("gitlab.example.auth.crt"), "x").unwrap();
        std::fs::write(b.path().join("gitlab.example.auth.crt"), "x").unwrap();
        std::fs::write(b.path().join("gitlab.example.auth.key"), "x").unwrap();
        let dirs = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        let found = resolve(&TlsFiles::default(), "gitlab.example", &dirs);
        assert_eq!(found.ca_file, Some(b.path().join("gitlab.example.crt")));
        assert_eq!(
            found.cert_file,
            Some(a.path().join("gitlab.example.auth.crt"))
        );
        assert_eq!(
            found.key_file,
            Some(b.path().join("gitlab.example.auth.key"))
        );
        // The entry's own file wins, even when it does not exist (gitlab-runner then uses the
        // system's CAs, and so does runner-medic).
        let own = TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        let found = resolve(&own, "gitlab.example", &dirs);
        assert_eq!(found.ca_file, own.ca_file);
        assert_eq!(
            problems(&found),
            vec![
                "tls-ca-file `/nonexistent/ca.pem` does not exist; the system's CAs are used instead"
                    .to_string(),
                format!(
                    "the client certificate `{}` / `{}` holds no PEM certificate; no client certificate is sent",
                    a.path().join("gitlab.example.auth.crt").display(),
                    b.path().join("gitlab.example.auth.key").display()
                )
            ]
        );
        assert_eq!(
            gitlab_runner_certs_dir(true, None),
            Some(PathBuf::from("/etc/gitlab-runner/certs"))
        );
        assert_eq!(
            gitlab_runner_certs_dir(false, Some(Path::new("/home/u"))),
            Some(PathBuf::from("/home/u/.gitlab-runner/certs"))
        );
    }
}
