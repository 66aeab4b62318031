//! PostgreSQL over TLS, as `database_url` asks with libpq's own words, so a DBA's connection string
//! means here what it means to `psql`:
//!
//! | `sslmode` | here |
//! |---|---|
//! | absent, `disable`, `allow`, `prefer` | no TLS (the database is on HQ's own network, or this is a test) |
//! | `require` | TLS; the certificate is not checked unless `sslrootcert` names the CA (then as `verify-ca`) |
//! | `verify-ca` | TLS; the chain must lead to `sslrootcert` (or the system's roots); any name |
//! | `verify-full` | TLS; the chain as above and the certificate must name the host HQ dials |
//!
//! Decision: `prefer` does not try TLS. With it, libpq encrypts without checking whom it talks to,
//! which protects from nobody who can intercept; a chain that wants encryption says `verify-full`.
//! `sslrootcert` is a PEM file of CA certificates. The options are taken out of the string before
//! `tokio_postgres` parses the rest (it knows neither `verify-*` nor `sslrootcert`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgTlsMode {
    Off,
    /// Encrypted, whoever answers.
    Encrypt,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    #[error("database_url: sslmode={0} is not one of disable, allow, prefer, require, verify-ca, verify-full")]
    Mode(String),
    #[error("database_url: sslrootcert {0}")]
    Roots(#[source] lpmesh_web::tls::ClientTlsError),
    #[error("database_url: {0}")]
    Syntax(String),
    #[error("TLS for PostgreSQL: {0}")]
    Rustls(#[source] crate::envelope::BoxError),
}

/// A connection string split into what `tokio_postgres` reads and what TLS needs.
#[derive(Debug, PartialEq)]
pub struct PgTarget {
    /// The string for `tokio_postgres`, with `sslmode` set to `disable` or `require`.
    pub url: String,
    pub mode: PgTlsMode,
    pub root_cert: Option<PathBuf>,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // On bytes: the two after a '%' need not be characters of their own ("%é" is no escape).
        let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        if b[i] == b'%' {
            let hex = hex.filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()));
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `key=value` pairs of a libpq keyword string, each with its text as written (values may be
/// single-quoted, with `\'` and `\\` inside).
fn keywords(s: &str) -> Result<Vec<(String, String, String)>, PgTlsError> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        if chars.next().map(|(_, c)| c) != Some('=') {
            return Err(PgTlsError::Syntax(format!("`{key}` has no value")));
        }
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek().is_some_and(|(_, c)| *c == '\'') {
            chars.next();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(PgTlsError::Syntax(format!("`{key}`: unterminated quote")));
            }
        } else {
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        let end = chars.peek().map_or(s.len(), |(i, _)| *i);
        out.push((key, value, s[start..end].to_string()));
    }
    Ok(out)
}

fn mode_of(sslmode: Option<&str>, root: bool) -> Result<PgTlsMode, PgTlsError> {
    Ok(match sslmode {
        None | Some("disable" | "allow" | "prefer") => PgTlsMode::Off,
        Some("require") if root => PgTlsMode::VerifyCa,
        Some("require") => PgTlsMode::Encrypt,
        Some("verify-ca") => PgTlsMode::VerifyCa,
        Some("verify-full") => PgTlsMode::VerifyFull,
        Some(other) => return Err(PgTlsError::Mode(other.to_string())),
    })
}

impl PgTarget {
    pub fn parse(url: &str) -> Result<PgTarget, PgTlsError> {
        let (mut sslmode, mut root) = (None, None);
        let url_form = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let mut rest: Vec<String> = Vec::new();
        let base = if url_form {
            let (base, query) = url.split_once('?').unwrap_or((url, ""));
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                match k {
                    "sslmode" => sslmode = Some(percent_decode(v)),
                    "sslrootcert" => root = Some(PathBuf::from(percent_decode(v))),
                    _ => rest.push(pair.to_string()),
                }
            }
            base.to_string()
        } else {
            for (k, v, text) in keywords(url)? {
                match k.as_str() {
                    "sslmode" => sslmode = Some(v),
                    "sslrootcert" => root = Some(PathBuf::from(v)),
                    _ => rest.push(text),
                }
            }
            String::new()
        };
        let mode = mode_of(sslmode.as_deref(), root.is_some())?;
        let tls = if mode == PgTlsMode::Off { "disable" } else { "require" };
        let url = if url_form {
            rest.push(format!("sslmode={tls}"));
            format!("{base}?{}", rest.join("&"))
        } else {
            rest.push(format!("sslmode={tls}"));
            rest.join(" ")
        };
        Ok(PgTarget {
            url,
            mode,
            root_cert: root,
        })
    }

    /// The rustls configuration for this mode; `None` without TLS.
    pub fn client_config(&self) -> Result<Option<rustls::ClientConfig>, PgTlsError> {
        if self.mode == PgTlsMode::Off {
            return Ok(None);
        }
        let provider = lpmesh_web::tls::provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| PgTlsError::Rustls(e.into()))?;
        let verifier: Arc<dyn ServerCertVerifier> = match self.mode {
            PgTlsMode::Encrypt => Arc::new(AnyCertificate(provider)),
            _ => {
                let roots = Arc::new(roots(self.root_cert.as_deref())?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| PgTlsError::Rustls(e.into()))?;
                if self.mode == PgTlsMode::VerifyCa {
                    Arc::new(AnyName(webpki))
                } else {
                    webpki
                }
            }
        };
        Ok(Some(
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth(),
        ))
    }
}

fn roots(file: Option<&Path>) -> Result<rustls::RootCertStore, PgTlsError> {
    lpmesh_web::tls::trust_roots(file).map_err(PgTlsError::Roots)
}

/// `require` without a CA: encryption against a passive listener only. The server still proves it
/// holds the key of the certificate it shows.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain is checked, the name is not.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Connects as the target says, the connection's task spawned (it logs when the connection ends).
pub async fn connect(target: &PgTarget) -> Result<tokio_postgres::Client, crate::store::StoreError> {
    let tls = target
        .client_config()
        .map_err(|e| crate::store::StoreError::Tls(e.into()))?;
    let client = match tls {
        None => {
            let (client, conn) = tokio_postgres::connect(&target.url, tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::error!(error = %e, "PostgreSQL connection lost");
                }
            });
            client
        }
        Some(cfg) => {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(cfg);
            let (client, conn) = tokio_postgres::connect(&target.url, tls).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::error!(error = %e, "PostgreSQL connection lost");
                }
            });
            client
        }
    };
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_words_are_read_and_taken_out_of_both_forms() {
        let t = PgTarget::parse("host=db user=lpmesh dbname=lpmesh").unwrap();
        assert_eq!(t.mode, PgTlsMode::Off);
        assert_eq!(t.url, "host=db user=lpmesh dbname=lpmesh sslmode=disable");
        let t = PgTarget::parse("host=db sslmode=verify-full  sslrootcert='/etc/my ca.pem' user=x").unwrap();
        assert_eq!(t.mode, PgTlsMode::VerifyFull);
        assert_eq!(t.root_cert, Some(PathBuf::from("/etc/my ca.pem")));
        assert_eq!(t.url, "host=db user=x sslmode=require");
        let t = PgTarget::parse("host=db sslmode=require").unwrap();
        assert_eq!(t.mode, PgTlsMode::Encrypt);
        let t = PgTarget::parse("host=db sslmode=require sslrootcert=/ca.pem").unwrap();
        assert_eq!(
            t.mode,
            PgTlsMode::VerifyCa,
            "a CA given means it is checked, as libpq does"
        );
        let t = PgTarget::parse(
            "postgresql://u@db:5433/lpmesh?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=5",
        )
        .unwrap();
        assert_eq!(t.mode, PgTlsMode::VerifyCa);
        assert_eq!(t.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(t.url, "postgresql://u@db:5433/lpmesh?connect_timeout=5&sslmode=require");
        let t = PgTarget::parse("postgres://db/x").unwrap();
        assert_eq!(
            (t.mode, t.url.as_str()),
            (PgTlsMode::Off, "postgres://db/x?sslmode=disable")
        );
        assert!(matches!(
            PgTarget::parse("host=db sslmode=always"),
            Err(PgTlsError::Mode(_))
        ));
        // A '%' before a character of several bytes is kept as written, not a crash.
        let t = PgTarget::parse("postgres://db/x?sslmode=require&sslrootcert=/ca%2é%+1.pem%").unwrap();
        assert_eq!(t.root_cert, Some(PathBuf::from("/ca%2é%+1.pem%")));
        assert!(matches!(
            PgTarget::parse("host=db password='open"),
            Err(PgTlsError::Syntax(_))
        ));
        let e = PgTarget::parse("host=db sslmode=verify-full sslrootcert=/nonexistent.pem")
            .unwrap()
            .client_config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent.pem"), "{e}");
    }
}
