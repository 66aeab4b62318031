//! Serving a router, over plain HTTP or TLS, the one way every lpmesh listener does: bound first so
//! that port 0 reports the port it got, the client's address available to handlers (the login limits
//! need it), a deadline on request heads, and a graceful stop.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum_server::tls_rustls::RustlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    // The OS's reason is part of the message: it is what an installer acts on (a port in use).
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: std::io::Error },
    #[error("TLS certificate and key: {0}")]
    Tls(std::io::Error),
    #[error("this listener serves plain HTTP")]
    NotTls,
}

/// A listener that serves until [`Running::shutdown`].
pub struct Running {
    pub addr: SocketAddr,
    handle: axum_server::Handle<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
    tls: Option<RustlsConfig>,
}

impl Running {
    /// The TLS configuration served, for a task that replaces the certificate later.
    pub fn tls_config(&self) -> Option<RustlsConfig> {
        self.tls.clone()
    }

    /// Serves another certificate chain and key from the next handshake on (connections open keep
    /// theirs); an error leaves the one served now.
    pub async fn reload_tls(&self, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<(), ServeError> {
        match &self.tls {
            Some(t) => t.reload_from_pem(cert_pem, key_pem).await.map_err(ServeError::Tls),
            None => Err(ServeError::NotTls),
        }
    }

    /// Stops accepting, lets requests in flight finish (for at most `grace`), and waits.
    pub async fn shutdown(self, grace: Duration) {
        self.handle.graceful_shutdown(Some(grace));
        let _ = self.task.await;
    }
}

/// Serves `router` on `addr` (port 0 picks a free one; see [`Running::addr`]), over TLS when `tls`
/// holds a PEM certificate chain and key. `name` says whose listener stopped, in the log.
pub async fn serve(
    router: Router,
    addr: SocketAddr,
    tls: Option<(Vec<u8>, Vec<u8>)>,
    name: &'static str,
) -> Result<Running, ServeError> {
    let listen_error = |reason| ServeError::Listen { addr, reason };
    let listener = std::net::TcpListener::bind(addr).map_err(listen_error)?;
    listener.set_nonblocking(true).map_err(listen_error)?;
    let local = listener.local_addr().map_err(listen_error)?;
    let handle = axum_server::Handle::new();
    let svc = router.into_make_service_with_connect_info::<SocketAddr>();
    let (task, tls) = match tls {
        None => {
            let mut server = axum_server::from_tcp(listener)
                .map_err(listen_error)?
                .handle(handle.clone());
            // A client that never finishes its request head (slowloris) is cut off.
            server
                .http_builder()
                .http1()
                .header_read_timeout(crate::body::HEADER_DEADLINE);
            let task = tokio::spawn(async move {
                if let Err(e) = server.serve(svc).await {
                    tracing::error!(error = %e, listener = name, "listener stopped");
                }
            });
            (task, None)
        }
        Some((cert, key)) => {
            // rustls is built with ring only; say so rather than rely on feature detection.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let cfg = RustlsConfig::from_pem(cert, key).await.map_err(ServeError::Tls)?;
            let mut server = axum_server::from_tcp_rustls(listener, cfg.clone())
                .map_err(listen_error)?
                .handle(handle.clone());
            server
                .http_builder()
                .http1()
                .header_read_timeout(crate::body::HEADER_DEADLINE);
            let task = tokio::spawn(async move {
                if let Err(e) = server.serve(svc).await {
                    tracing::error!(error = %e, listener = name, "listener stopped");
                }
            });
            (task, Some(cfg))
        }
    };
    Ok(Running {
        addr: local,
        handle,
        task,
        tls,
    })
}
