//! HQ's TLS certificate and its age identity, kept in the data directory.
//!
//! Without a configured certificate HQ generates a self-signed one (for the demo, or a chain that pins
//! it on its nodes) and prints its SHA-256 fingerprint; stores are given `cert.pem` as `[hq] ca_cert`.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub const IDENTITY_FILE: &str = "hq.identity";
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File {
        path: PathBuf,
        #[source]
        reason: crate::envelope::BoxError,
    },
    #[error("cannot generate a certificate: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("{path}: no certificate in the file")]
    NoCert { path: PathBuf },
}

fn file_err(path: &Path, e: impl Into<crate::envelope::BoxError>) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: e.into(),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_err(path, e))?;
    f.write_all(bytes).map_err(|e| file_err(path, e))?;
    f.sync_all().map_err(|e| file_err(path, e))
}

/// HQ's age identity: created on first use, owner-only.
pub fn load_or_create_identity(data_dir: &Path) -> Result<age::x25519::Identity, TlsError> {
    use age::secrecy::ExposeSecret;
    std::fs::create_dir_all(data_dir).map_err(|e| file_err(data_dir, e))?;
    let path = data_dir.join(IDENTITY_FILE);
    if !path.exists() {
        let id = age::x25519::Identity::generate();
        write_private(&path, format!("{}\n", id.to_string().expose_secret()).as_bytes())?;
    }
    let text = std::fs::read_to_string(&path).map_err(|e| file_err(&path, e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .map_err(|e| file_err(&path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(file_err(
                &path,
                format!(
                    "mode {:o}: must be readable by its owner only (chmod 600)",
                    mode & 0o777
                ),
            ));
        }
    }
    text.trim()
        .parse::<age::x25519::Identity>()
        .map_err(|e| file_err(&path, e))
}

/// The PEM certificate chain and key to serve, and the certificate's fingerprint.
pub struct ServerCert {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub cert_path: PathBuf,
    pub fingerprint: String,
    pub generated: bool,
}

pub fn load_or_create_cert(
    data_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
    names: &[String],
) -> Result<ServerCert, TlsError> {
    let (cert_path, key_path, generated) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf(), false),
        _ => {
            let c = data_dir.join(CERT_FILE);
            let k = data_dir.join(KEY_FILE);
            if !c.exists() || !k.exists() {
                std::fs::create_dir_all(data_dir).map_err(|e| file_err(data_dir, e))?;
                let ck = rcgen::generate_simple_self_signed(names.to_vec()).map_err(TlsError::Generate)?;
                let _ = std::fs::remove_file(&k);
                write_private(&k, ck.signing_key.serialize_pem().as_bytes())?;
                std::fs::write(&c, ck.cert.pem()).map_err(|e| file_err(&c, e))?;
            }
            (c, k, true)
        }
    };
    let cert_pem = std::fs::read(&cert_path).map_err(|e| file_err(&cert_path, e))?;
    let key_pem = std::fs::read(&key_path).map_err(|e| file_err(&key_path, e))?;
    let fingerprint = fingerprint(&cert_pem).ok_or_else(|| TlsError::NoCert {
        path: cert_path.clone(),
    })?;
    Ok(ServerCert {
        cert_pem,
        key_pem,
        cert_path,
        fingerprint,
        generated,
    })
}

/// SHA-256 of the first certificate's DER, as colon-separated hex (what browsers show).
pub fn fingerprint(pem: &[u8]) -> Option<String> {
    let der = rustls_pemfile::certs(&mut &pem[..]).next()?.ok()?;
    let d = Sha256::digest(der.as_ref());
    Some(d.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"))
}
