//! The webhook route: each alert POSTed as JSON; retried, in order, until a 2xx.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::config::{parse_webhook_url, RouteConfig, TlsError};
use super::queue::{close_deadline, idle, pause, sleep_until_opt, CloseSignal, RouteShared};
use super::RouteError;
use crate::backoff::Backoff;

/// One attempt, connection included.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Only the status matters; a chatty receiver's body is read up to this much, then ignored.
const MAX_RESPONSE: usize = 16 * 1024;

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The webhook route before it runs.
pub struct WebhookRoute {
    uri: hyper::Uri,
    /// The secret alerts are signed with (`secret_file`), if any.
    secret: Option<Vec<u8>>,
    /// The URL without credentials or query, for logs.
    shown: String,
    client: HttpsClient,
}

#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("answered {0}")]
    Status(u16),
    #[error("cannot build the request: {0}")]
    Request(#[source] hyper::http::Error),
    // Logged alone: its causes are in its message too.
    #[error("{}", chain(.0))]
    Http(#[source] hyper_util::client::legacy::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl WebhookRoute {
    pub fn new(r: &RouteConfig) -> Result<WebhookRoute, RouteError> {
        let url = r.url.as_deref().ok_or(RouteError::NoUrl)?;
        let uri = parse_webhook_url(url)?;
        let secret = r
            .secret_file
            .as_deref()
            .map(|f| super::config::read_secret(f, 16))
            .transpose()?;
        let tls = if uri.scheme_str() == Some("https") || r.ca_file.is_some() {
            super::config::client_tls(r.ca_file.as_deref())?
        } else {
            // A LAN receiver on http:// needs no certificates: none are read.
            Arc::new(lpmesh_web::tls::client_config(rustls::RootCertStore::empty()).map_err(TlsError::Setup)?)
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        let shown = format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("http"),
            uri.host().unwrap_or(""),
            uri.port().map(|p| format!(":{p}")).unwrap_or_default()
        ) + uri.path();
        Ok(WebhookRoute {
            uri,
            secret,
            shown,
            client,
        })
    }

    async fn post(&self, body: &Bytes) -> Result<(), AttemptError> {
        let mut req = hyper::Request::builder()
            .method(hyper::Method::POST)
            .uri(self.uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, concat!("lpmesh/", env!("CARGO_PKG_VERSION")));
        if let Some(secret) = &self.secret {
            // Signed at each attempt: a retry carries a fresh time, so a receiver may refuse old ones.
            let at = chrono::Utc::now().timestamp();
            req = req
                .header(TIMESTAMP_HEADER, at.to_string())
                .header(SIGNATURE_HEADER, signature(secret, at, body));
        }
        let req = req.body(Full::new(body.clone())).map_err(AttemptError::Request)?;
        let attempt = async {
            let resp = self.client.request(req).await.map_err(AttemptError::Http)?;
            let status = resp.status();
            // Reading (a bounded part of) the body lets the connection be reused.
            let _ = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await;
            if status.is_success() {
                Ok(())
            } else {
                Err(AttemptError::Status(status.as_u16()))
            }
        };
        tokio::time::timeout(ATTEMPT_TIMEOUT, attempt)
            .await
            .map_err(|_| AttemptError::Timeout(ATTEMPT_TIMEOUT))?
    }

    pub async fn run(self, shared: Arc<RouteShared>, mut close: CloseSignal) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 0.2, rand::random());
        let mut left = 0u64;
        'alerts: loop {
            let Some(alert) = shared.pop_alert() else {
                // Closing with nothing left is done (nothing new is accepted once closing); otherwise wait
                // for work, or for the close deadline.
                if close_deadline(&close).is_some() || idle(&shared, &mut close).await {
                    break;
                }
                continue;
            };
            shared.held.store(1, Ordering::Relaxed);
            let body = match serde_json::to_vec(&alert) {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    tracing::error!(route = %shared.name, "cannot encode an alert: {e}");
                    shared.count_dropped(1);
                    shared.held.store(0, Ordering::Relaxed);
                    continue;
                }
            };
            loop {
                let deadline = close_deadline(&close);
                let result = tokio::select! {
                    r = self.post(&body) => Some(r),
                    _ = sleep_until_opt(deadline) => None,
                };
                match result {
                    None => {
                        left += 1;
                        break 'alerts;
                    }
                    Some(Ok(())) => {
                        shared.sent.fetch_add(1, Ordering::Relaxed);
                        if !shared.connected.swap(true, Ordering::Relaxed) && backoff.attempts() > 0 {
                            tracing::info!(route = %shared.name, url = %self.shown, attempts = backoff.attempts(), "webhook delivered again");
                        }
                        backoff.reset();
                        break;
                    }
                    Some(Err(e)) => {
                        shared.failed.fetch_add(1, Ordering::Relaxed);
                        shared.connected.store(false, Ordering::Relaxed);
                        let delay = backoff.next_delay();
                        tracing::warn!(
                            route = %shared.name, url = %self.shown, incident = %alert.incident,
                            queued = shared.queue_len(), "webhook failed: {e}; retrying in {delay:.1?}"
                        );
                        if pause(delay, &mut close).await {
                            left += 1;
                            break 'alerts;
                        }
                    }
                }
            }
            shared.held.store(0, Ordering::Relaxed);
        }
        while shared.pop_alert().is_some() {
            left += 1;
        }
        shared.held.store(0, Ordering::Relaxed);
        if left > 0 {
            shared.count_dropped(left);
            tracing::warn!(route = %shared.name, url = %self.shown, undelivered = left, "webhook alert route stopped with alerts undelivered");
        } else {
            tracing::info!(route = %shared.name, "webhook alert route stopped");
        }
    }
}

pub const TIMESTAMP_HEADER: &str = "x-lpmesh-timestamp";
pub const SIGNATURE_HEADER: &str = "x-lpmesh-signature";

/// `v1=` and the hex HMAC-SHA256, under `secret`, of `"<at>.<body>"`: what a receiver recomputes
/// (and compares in constant time) to know the alert came from the store, unchanged, at `at`.
pub fn signature(secret: &[u8], at: i64, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC takes a key of any length: never reached.
        Err(_) => return String::new(),
    };
    mac.update(at.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!("v1={}", tag.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// An error with its causes: hyper's top-level message alone ("client error (Connect)") says little.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
