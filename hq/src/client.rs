//! The store side of the protocol: an HTTPS client that posts envelopes to HQ and probes it.
//!
//! HQ's certificate is checked against `ca_cert` when one is configured (a self-signed HQ, pinned), else
//! against the system's roots.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::envelope::BoxError;
use crate::server::{Ack, Refusal, INGEST_PATH};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("HQ URL {0:?}: {1}")]
    Url(String, #[source] BoxError),
    #[error("TLS set-up: {0}")]
    Tls(#[from] lpmesh_web::tls::ClientTlsError),
    // The causes in the message too: hyper's own ("client error (Connect)") says little, and the
    // uplink shows the message alone.
    #[error("HQ unreachable: {}", error_chain(.0.as_ref()))]
    Unreachable(#[source] BoxError),
    #[error("HQ did not answer within {0:?}")]
    Timeout(Duration),
    /// HQ answered, and refused (the envelope will not become acceptable by retrying unchanged).
    #[error("HQ refused the summary ({status}): {error}: {message}")]
    Refused {
        status: u16,
        error: String,
        message: String,
    },
    /// HQ is there but cannot take it now (storage down): retry later.
    #[error("HQ is unavailable ({status}): {message}")]
    Unavailable { status: u16, message: String },
    #[error("HQ answered something unexpected ({status}): {body}")]
    Protocol { status: u16, body: String },
}

#[derive(Clone)]
pub struct HqClient {
    base: String,
    client: Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl HqClient {
    /// `url` is HQ's base URL (`https://host:port`); `ca_cert` a PEM file of certificates to trust.
    pub fn new(url: &str, ca_cert: Option<&Path>, timeout: Duration) -> Result<HqClient, ClientError> {
        let base = url.trim_end_matches('/').to_string();
        let uri: hyper::Uri = base
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| ClientError::Url(url.to_string(), e.into()))?;
        if uri.scheme_str() != Some("https") || uri.host().is_none() {
            return Err(ClientError::Url(
                url.to_string(),
                "must be https://host[:port] (summaries only travel over TLS)".into(),
            ));
        }
        let tls = lpmesh_web::tls::client_config(lpmesh_web::tls::trust_roots(ca_cert)?)?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(HqClient { base, client, timeout })
    }

    async fn request(&self, method: hyper::Method, path: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), ClientError> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Url(self.base.clone(), e.into()))?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| ClientError::Unreachable(e.into()))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Unreachable(e.into()))?
                .to_bytes()
                .to_vec();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
    }

    /// Whether HQ answers its health check.
    pub async fn probe(&self) -> Result<(), ClientError> {
        let (status, body) = self.request(hyper::Method::GET, "/health", Vec::new()).await?;
        if status == 200 {
            Ok(())
        } else {
            Err(ClientError::Protocol {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        }
    }

    /// Posts one encoded envelope. `Ok` carries HQ's answer, stale (409) included: it says what HQ holds.
    pub async fn post(&self, envelope: Vec<u8>) -> Result<Ack, ClientError> {
        let (status, body) = self.request(hyper::Method::POST, INGEST_PATH, envelope).await?;
        match status {
            200 | 409 => serde_json::from_slice(&body).map_err(|_| ClientError::Protocol {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            }),
            500..=599 => Err(ClientError::Unavailable {
                status,
                message: String::from_utf8_lossy(&body).into_owned(),
            }),
            _ => match serde_json::from_slice::<Refusal>(&body) {
                Ok(r) => Err(ClientError::Refused {
                    status,
                    error: r.error,
                    message: r.message,
                }),
                Err(_) => Err(ClientError::Protocol {
                    status,
                    body: String::from_utf8_lossy(&body).into_owned(),
                }),
            },
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_url_is_refused_with_its_cause() {
        let Err(e) = HqClient::new("https://bad host", None, Duration::from_secs(1)) else {
            panic!("a URL with a space was taken");
        };
        let cause = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
        assert!(matches!(e, ClientError::Url(..)), "{e:?}");
        assert_eq!(e.to_string(), format!("HQ URL \"https://bad host\": {cause}"));
        let Err(e) = HqClient::new("http://hq.example", None, Duration::from_secs(1)) else {
            panic!("http:// was taken");
        };
        assert!(
            e.to_string()
                .ends_with("must be https://host[:port] (summaries only travel over TLS)"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_hq_that_does_not_answer_is_unreachable_and_the_causes_are_kept() {
        let port = lpmesh_web::clock::free_loopback_port().unwrap();
        let c = HqClient::new(&format!("https://127.0.0.1:{port}"), None, Duration::from_secs(5)).unwrap();
        let e = c.probe().await.unwrap_err();
        assert!(matches!(e, ClientError::Unreachable(_)), "{e:?}");
        let cause = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
        // The message goes on past hyper's own ("client error (Connect)") to what refused it.
        assert!(e.to_string().starts_with(&format!("HQ unreachable: {cause}: ")), "{e}");
    }
}
