//! The store's own certificate authority and the certificates it issues to its nodes' tablet UIs.
//!
//! A tablet trusts the store once (its CA certificate, installed like any enterprise root) and then
//! every node of the store over HTTPS with no warning, whichever node it reaches and whatever the
//! node's address. The CA's key is one of the store's secrets (every member holds it); each node
//! issues itself a fresh leaf certificate at every start for the names and addresses it answers to.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the store's CA key: {0}")]
    Key(#[source] rcgen::Error),
}

/// A CA as PEM text.
#[derive(Clone, PartialEq, Eq)]
pub struct CaPem {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaPem").finish_non_exhaustive()
    }
}

/// How long the CA is valid: longer than the hardware it runs on.
const CA_YEARS: i32 = 20;
/// A leaf is issued at every start; this long covers a node that never restarts for a year, and
/// stays within what browsers accept for a leaf.
const LEAF_DAYS: i64 = 397;

fn ca_params(store: &str) -> Result<CertificateParams, CertError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("lpmesh store {store} tablet CA"));
    dn.push(DnType::OrganizationName, "lpmesh");
    p.distinguished_name = dn;
    Ok(p)
}

/// A new CA for `store`'s tablet UIs (ECDSA P-256, which every browser accepts).
pub fn new_ca(store: &str) -> Result<CaPem, CertError> {
    let key = KeyPair::generate()?;
    let mut p = ca_params(store)?;
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now
        .replace_year(now.year() + CA_YEARS)
        .unwrap_or(now + time::Duration::days(7300));
    let cert = p.self_signed(&key)?;
    Ok(CaPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A leaf certificate chain (leaf, then the CA) and its key, PEM, for a node answering to `names`
/// and `ips`, issued by the store's CA.
pub fn issue(store: &str, ca: &CaPem, names: &[String], ips: &[IpAddr]) -> Result<(Vec<u8>, Vec<u8>), CertError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(CertError::Key)?;
    // The issuer is rebuilt from the same name and key: what the leaf names as its issuer and the
    // key that signs it are the CA's, which is all a verifier matches.
    let issuer = Issuer::new(ca_params(store)?, ca_key);
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut sans: Vec<SanType> = Vec::new();
    for n in names {
        if let Ok(n) = n.as_str().try_into() {
            if !sans.iter().any(|s| matches!(s, SanType::DnsName(d) if *d == n)) {
                sans.push(SanType::DnsName(n));
            }
        }
    }
    for ip in ips {
        if !sans.contains(&SanType::IpAddress(*ip)) {
            sans.push(SanType::IpAddress(*ip));
        }
    }
    p.subject_alt_names = sans;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_else(|| "lpmesh node".into()),
    );
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(LEAF_DAYS);
    let leaf = p.signed_by(&key, &issuer)?;
    let mut chain = leaf.pem().into_bytes();
    chain.extend_from_slice(ca.cert_pem.as_bytes());
    Ok((chain, key.serialize_pem().into_bytes()))
}

/// The DER of the first certificate in a PEM text.
pub fn first_der(pem: &str) -> Option<Vec<u8>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .map(|c| c.to_vec())
}

/// SHA-256 of a certificate's DER, as browsers and `openssl x509 -fingerprint -sha256` show it.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(ca_pem: &str) -> std::sync::Arc<rustls::client::WebPkiServerVerifier> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(first_der(ca_pem).unwrap()))
            .unwrap();
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn a_leaf_issued_by_the_store_ca_is_trusted_for_its_names_and_addresses_only() {
        use rustls::client::danger::ServerCertVerifier;
        let ca = new_ca("shop-1").unwrap();
        let ips: Vec<IpAddr> = vec!["10.0.0.7".parse().unwrap(), "::1".parse().unwrap()];
        let names = vec![
            "front-desk".to_string(),
            "localhost".to_string(),
            "not a name!".to_string(),
        ];
        let (chain, key) = issue("shop-1", &ca, &names, &ips).unwrap();
        assert!(String::from_utf8(key).unwrap().contains("PRIVATE KEY"));
        let certs: Vec<_> = rustls_pemfile::certs(&mut chain.as_slice())
            .map(Result::unwrap)
            .collect();
        assert_eq!(certs.len(), 2, "leaf and CA");
        let v = verifier(&ca.cert_pem);
        let now = rustls::pki_types::UnixTime::now();
        for name in ["front-desk", "localhost", "10.0.0.7", "::1"] {
            let sn = rustls::pki_types::ServerName::try_from(name).unwrap();
            v.verify_server_cert(&certs[0], &certs[1..], &sn, &[], now)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for name in ["elsewhere", "10.0.0.8"] {
            let sn = rustls::pki_types::ServerName::try_from(name).unwrap();
            assert!(
                v.verify_server_cert(&certs[0], &certs[1..], &sn, &[], now).is_err(),
                "{name}"
            );
        }
        // Another store's CA does not vouch for it.
        let other = verifier(&new_ca("shop-1").unwrap().cert_pem);
        let sn = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        assert!(other.verify_server_cert(&certs[0], &certs[1..], &sn, &[], now).is_err());
        let f = fingerprint(&first_der(&ca.cert_pem).unwrap());
        assert_eq!(f.len(), 32 * 3 - 1);
    }
}

/// Why a TLS client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    // The reason is part of the message: it is what the installer fixes (a path, a permission).
    #[error("{}: {reason}", path.display())]
    Read {
        path: std::path::PathBuf,
        reason: std::io::Error,
    },
    #[error("{}: no certificate in it", path.display())]
    NoCertificate { path: std::path::PathBuf },
    #[error("{}: a certificate in it cannot be used: {reason}", path.display())]
    Unusable {
        path: std::path::PathBuf,
        reason: rustls::Error,
    },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The roots a client trusts: the certificates in `ca_file`, or the system's without one (which may
/// be none at all on a machine without `ca-certificates`: the caller decides whether that is fatal).
/// Every certificate in the file must be one rustls accepts: a CA file with a broken certificate in
/// it is a mistake the installer should hear about at start, not a root quietly left out.
pub fn trust_roots(ca_file: Option<&std::path::Path>) -> Result<rustls::RootCertStore, ClientTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let read = |reason| ClientTlsError::Read {
                path: path.to_path_buf(),
                reason,
            };
            let pem = std::fs::read(path).map_err(read)?;
            let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<_, _>>()
                .map_err(read)?;
            if certs.is_empty() {
                return Err(ClientTlsError::NoCertificate {
                    path: path.to_path_buf(),
                });
            }
            for c in certs {
                roots.add(c).map_err(|reason| ClientTlsError::Unusable {
                    path: path.to_path_buf(),
                    reason,
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading system certificates");
            }
            roots.add_parsable_certificates(found.certs);
        }
    }
    Ok(roots)
}

/// The one crypto provider every lpmesh TLS endpoint uses: rustls is built with ring only.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client (safe protocol versions, no client certificate) that trusts `roots`.
pub fn client_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, ClientTlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod client_tests {
    use super::*;

    #[test]
    fn roots_come_from_the_file_and_a_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("lpmesh-roots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = new_ca("roots test").unwrap();
        let good = dir.join("ca.pem");
        std::fs::write(&good, &ca.cert_pem).unwrap();
        let roots = trust_roots(Some(&good)).unwrap();
        assert_eq!(roots.len(), 1);
        assert!(client_config(roots).is_ok());
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = trust_roots(Some(&empty)).unwrap_err();
        assert!(e.to_string().contains("no certificate in it"), "{e}");
        // A PEM block that is not a certificate rustls can use is refused, not skipped.
        let broken = dir.join("broken.pem");
        let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        std::fs::write(&broken, format!("{}{junk}", ca.cert_pem)).unwrap();
        let e = trust_roots(Some(&broken)).unwrap_err();
        assert!(e.to_string().contains("cannot be used"), "{e}");
        let missing = dir.join("missing.pem");
        let e = trust_roots(Some(&missing)).unwrap_err();
        assert!(e.to_string().starts_with(&missing.display().to_string()), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
