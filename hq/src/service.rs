//! `lpmesh hq`: HQ's identity, certificate and store, assembled from its configuration.

use std::sync::Arc;

use crate::access::{HqUser, UserError};
use crate::config::{HqConfig, HqConfigError};
use crate::server::{serve, serve_dashboard, DashboardOptions, HqState, Running, ServeError};
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
    #[error(transparent)]
    Config(#[from] HqConfigError),
    #[error(transparent)]
    User(#[from] UserError),
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
    /// The upload listener.
    pub running: Running,
    /// The dashboard listener.
    pub dashboard: Running,
    pub identity: Identity,
    pub state: Arc<HqState>,
    /// HQ users when it started (none: nobody can log in yet).
    pub users: usize,
}

impl Started {
    pub async fn shutdown(self, grace: std::time::Duration) {
        tokio::join!(self.running.shutdown(grace), self.dashboard.shutdown(grace));
    }
}

/// Opens the store (migrating PostgreSQL), and serves both listeners.
pub async fn start(cfg: &HqConfig) -> Result<Started, ServiceError> {
    let (age_id, cert) = load(cfg)?;
    let identity = describe(&age_id, &cert);
    let options = DashboardOptions {
        export_max_days: cfg.export_max_days,
        metrics_token: cfg.metrics_token()?,
    };
    let store = HqStore::open(&cfg.data_dir, cfg.database_url.as_deref(), cfg.database_connections).await?;
    let users = store.users().await?.len();
    let state = HqState::with_dashboard(store, age_id, cfg.max_envelope_bytes, options);
    let running = serve(state.clone(), cfg.listen, cert.cert_pem.clone(), cert.key_pem.clone()).await?;
    let dashboard = serve_dashboard(state.clone(), cfg.dashboard_listen, cert.cert_pem, cert.key_pem).await?;
    Ok(Started {
        running,
        dashboard,
        identity,
        state,
        users,
    })
}

/// The store the CLI changes while HQ may run: PostgreSQL, or for the embedded store only its files
/// (the registry, the users), never the database a running HQ holds open.
enum Admin {
    Postgres(HqStore),
    Files(std::path::PathBuf),
}

async fn admin(cfg: &HqConfig) -> Result<Admin, ServiceError> {
    Ok(match &cfg.database_url {
        Some(url) => Admin::Postgres(HqStore::Postgres(crate::store::Postgres::connect(url, 1).await?)),
        None => Admin::Files(cfg.data_dir.clone()),
    })
}

/// `lpmesh hq user add`: adds or replaces a user (their sessions end).
pub async fn put_user(cfg: &HqConfig, user: HqUser) -> Result<(), ServiceError> {
    match admin(cfg).await? {
        Admin::Postgres(s) => s.put_user(user).await?,
        Admin::Files(dir) => crate::access::put_user_in_file(&crate::access::users_path(&dir), user)?,
    }
    Ok(())
}

/// `lpmesh hq user remove`: `false` if there was no such user.
pub async fn remove_user(cfg: &HqConfig, name: &str) -> Result<bool, ServiceError> {
    Ok(match admin(cfg).await? {
        Admin::Postgres(s) => s.remove_user(name).await?,
        Admin::Files(dir) => crate::access::remove_user_from_file(&crate::access::users_path(&dir), name)?,
    })
}

pub async fn users(cfg: &HqConfig) -> Result<Vec<HqUser>, ServiceError> {
    Ok(match admin(cfg).await? {
        Admin::Postgres(s) => s.users().await?,
        Admin::Files(dir) => crate::access::read_users(&crate::access::users_path(&dir))?,
    })
}

/// `lpmesh hq unregister-store`: its uploads are refused (within [`crate::store::KEY_TTL`] on every
/// running HQ process), its summaries kept; `false` if it was not registered.
pub async fn unregister_store(cfg: &HqConfig, store: &str) -> Result<bool, ServiceError> {
    let now = chrono::Utc::now().timestamp_millis();
    Ok(match admin(cfg).await? {
        Admin::Postgres(s) => s.unregister_store(store, now).await?,
        Admin::Files(dir) => crate::store::unregister_in_file(&crate::store::registry_path(&dir), store, now)?,
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
