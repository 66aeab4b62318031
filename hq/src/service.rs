//! `lpmesh hq`: HQ's identity, certificate and store, assembled from its configuration.

use std::sync::Arc;

use crate::config::HqConfig;
use crate::server::{serve, HqState, Running, ServeError};
use crate::store::{HqStore, StoreError};
use crate::tls::{self, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// What an installer needs to configure the stores: HQ's recipient and certificate.
pub struct Identity {
    pub recipient: String,
    pub cert_path: std::path::PathBuf,
    pub fingerprint: String,
    pub self_signed: bool,
}

fn load(cfg: &HqConfig) -> Result<(age::x25519::Identity, tls::ServerCert), ServiceError> {
    let id = tls::load_or_create_identity(&cfg.data_dir)?;
    let cert = tls::load_or_create_cert(
        &cfg.data_dir,
        cfg.tls_cert.as_deref(),
        cfg.tls_key.as_deref(),
        &cfg.tls_names,
    )?;
    Ok((id, cert))
}

fn describe(id: &age::x25519::Identity, cert: &tls::ServerCert) -> Identity {
    Identity {
        recipient: id.to_public().to_string(),
        cert_path: cert.cert_path.clone(),
        fingerprint: cert.fingerprint.clone(),
        self_signed: cert.generated,
    }
}

/// Creates (first time) or loads HQ's identity and certificate.
pub fn init(cfg: &HqConfig) -> Result<Identity, ServiceError> {
    let (id, cert) = load(cfg)?;
    Ok(describe(&id, &cert))
}

pub struct Started {
    pub running: Running,
    pub identity: Identity,
    pub state: Arc<HqState>,
}

/// Opens the store (migrating PostgreSQL), and serves.
pub async fn start(cfg: &HqConfig) -> Result<Started, ServiceError> {
    let (age_id, cert) = load(cfg)?;
    let identity = describe(&age_id, &cert);
    let store = HqStore::open(&cfg.data_dir, cfg.database_url.as_deref()).await?;
    let state = HqState::new(store, age_id, cfg.max_envelope_bytes);
    let running = serve(state.clone(), cfg.listen, cert.cert_pem, cert.key_pem).await?;
    Ok(Started {
        running,
        identity,
        state,
    })
}

/// `lpmesh hq register-store`: works while HQ runs (PostgreSQL, or the embedded store's registry file).
pub async fn register_store(cfg: &HqConfig, store: &str, key: &str) -> Result<(), ServiceError> {
    let now = chrono::Utc::now().timestamp_millis();
    match &cfg.database_url {
        Some(url) => {
            let pg = crate::store::Postgres::connect(url, 1).await?;
            HqStore::Postgres(pg).register_store(store, key, now).await?;
        }
        None => {
            // Only the registry file is touched, not the database a running HQ holds open.
            crate::store::register_in_file(&cfg.data_dir, store, key, now)?;
        }
    }
    Ok(())
}
