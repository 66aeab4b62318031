//! `lpmesh hq --config FILE`: the HQ receiver's configuration (TOML). See `config/hq.example.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HqConfig {
    /// The upload listener (HTTPS), which every store must reach: the upload API only.
    pub listen: SocketAddr,
    /// The dashboard listener (HTTPS, login required): dashboard, export, metrics. Loopback by
    /// default; an internal address where analysts reach it, never where the stores do.
    pub dashboard_listen: SocketAddr,
    /// The longest span one export request (or store page) may cover, days.
    pub export_max_days: u32,
    /// A file holding a bearer token that lets a metrics scraper read `/metrics` without a login.
    pub metrics_token_file: Option<PathBuf>,
    /// HQ's identity (age), its self-signed certificate if none is configured, and the embedded store.
    pub data_dir: PathBuf,
    /// PostgreSQL connection string (`host=... user=... dbname=...` or `postgresql://...`). Without it,
    /// summaries go to the embedded store in `data_dir`.
    pub database_url: Option<String>,
    /// Connections to PostgreSQL per HQ process. Each carries many uploads at once, but its queries run
    /// one after another in one server process, so each commit waits for the one before it to reach
    /// the disk: more connections let PostgreSQL flush several uploads' commits in one fsync.
    pub database_connections: usize,
    /// A certificate chain and key (PEM) for a real deployment; both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Names (DNS or IP) the generated self-signed certificate is valid for.
    pub tls_names: Vec<String>,
    /// Largest envelope accepted, bytes.
    pub max_envelope_bytes: usize,
}

impl Default for HqConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            dashboard_listen: SocketAddr::from(([127, 0, 0, 1], 8444)),
            export_max_days: DEFAULT_EXPORT_MAX_DAYS,
            metrics_token_file: None,
            data_dir: PathBuf::from("/var/lib/lpmesh-hq"),
            database_url: None,
            database_connections: DEFAULT_DATABASE_CONNECTIONS,
            tls_cert: None,
            tls_key: None,
            tls_names: vec!["localhost".into(), "127.0.0.1".into()],
            max_envelope_bytes: crate::envelope::MAX_ENVELOPE_BYTES,
        }
    }
}

/// See [`HqConfig::database_connections`] and the README's `bench hq` figures.
pub const DEFAULT_DATABASE_CONNECTIONS: usize = 4;

/// More than this would hold more of PostgreSQL's connection slots than one HQ process can use.
pub const MAX_DATABASE_CONNECTIONS: usize = 64;

/// A quarter and a day: the span of a quarterly review.
pub const DEFAULT_EXPORT_MAX_DAYS: u32 = 93;

/// Whether two listeners would fight over one port.
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.port() != 0 && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[derive(Debug, thiserror::Error)]
pub enum HqConfigError {
    #[error("{path}: {reason}")]
    Read {
        path: PathBuf,
        #[source]
        reason: crate::envelope::BoxError,
    },
    /// toml's message names the line, column and field.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl HqConfig {
    /// The metrics token, if one is configured.
    pub fn metrics_token(&self) -> Result<Option<String>, HqConfigError> {
        let Some(path) = &self.metrics_token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| HqConfigError::Read {
            path: path.clone(),
            reason: e.into(),
        })?;
        let t = text.trim();
        if t.len() < 16 {
            return Err(HqConfigError::Read {
                path: path.clone(),
                reason: "the metrics token needs at least 16 characters".into(),
            });
        }
        Ok(Some(t.to_string()))
    }

    pub fn load(path: &Path) -> Result<HqConfig, HqConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| HqConfigError::Read {
            path: path.to_path_buf(),
            reason: e.into(),
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<HqConfig, HqConfigError> {
        let invalid = |message: String| HqConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let cfg: HqConfig = toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_string()))?;
        if cfg.tls_cert.is_some() != cfg.tls_key.is_some() {
            return Err(invalid("tls_cert and tls_key go together: set both or neither".into()));
        }
        if overlap(cfg.listen, cfg.dashboard_listen) {
            return Err(invalid(format!(
                "dashboard_listen ({}) must differ from listen ({}): the dashboard has its own listener",
                cfg.dashboard_listen, cfg.listen
            )));
        }
        if !(1..=MAX_DATABASE_CONNECTIONS).contains(&cfg.database_connections) {
            return Err(invalid(format!(
                "database_connections must be 1..={MAX_DATABASE_CONNECTIONS}"
            )));
        }
        if !(1..=3660).contains(&cfg.export_max_days) {
            return Err(invalid("export_max_days must be 1..=3660".into()));
        }
        if cfg.max_envelope_bytes < 1024 || cfg.max_envelope_bytes > crate::envelope::MAX_ENVELOPE_BYTES {
            return Err(invalid(format!(
                "max_envelope_bytes must be 1024..={}",
                crate::envelope::MAX_ENVELOPE_BYTES
            )));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_line_and_field() {
        let e = HqConfig::parse(
            "listen = \"127.0.0.1:9000\"\ndatabse_url = \"x\"\n",
            Path::new("hq.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("hq.toml:"), "{e}");
        assert!(e.contains("line 2") && e.contains("databse_url"), "{e}");
        let e = HqConfig::parse("listen = \"nowhere\"\n", Path::new("hq.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("listen"), "{e}");
        let ok = HqConfig::parse("data_dir = \"/tmp/x\"\n", Path::new("hq.toml")).unwrap();
        assert_eq!(ok.data_dir, PathBuf::from("/tmp/x"));
        assert!(HqConfig::parse("tls_cert = \"/a\"\n", Path::new("hq.toml")).is_err());
        let e = HqConfig::parse("dashboard_listen = \"127.0.0.1:8443\"\n", Path::new("hq.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("dashboard_listen"), "{e}");
        assert!(HqConfig::parse("export_max_days = 0\n", Path::new("hq.toml")).is_err());
        let e = HqConfig::parse("database_connections = 0\n", Path::new("hq.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("database_connections"), "{e}");
    }

    #[test]
    fn the_example_documents_the_defaults() {
        let text = include_str!("../../config/hq.example.toml");
        assert_eq!(
            HqConfig::parse(text, Path::new("hq.example.toml")).unwrap(),
            HqConfig::default()
        );
    }
}
