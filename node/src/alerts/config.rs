//! `[[alerts.route]]`: where a node sends alerts, and which ones.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::event::{EventKind, Severity};
use crate::schedule::Schedule;

/// The MQTT port used when `broker` names none.
pub const DEFAULT_MQTT_PORT: u16 = 1883;

/// The `[alerts]` section: the node's alert routes. No route, no alerts (the default).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// One `[[alerts.route]]` table per destination.
    pub route: Vec<RouteConfig>,
}

/// What kind of destination a route delivers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// An MQTT broker (QoS 1; retained camera states).
    Mqtt,
    /// An HTTP(S) endpoint that receives each alert as a JSON POST.
    Webhook,
    /// One line per alert on the node's standard output.
    Console,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Mqtt => "mqtt",
            RouteKind::Webhook => "webhook",
            RouteKind::Console => "console",
        }
    }
}

/// One alert route (`[[alerts.route]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique among the node's routes; names the route in logs and metrics.
    pub name: String,
    /// `"mqtt"`, `"webhook"` or `"console"`.
    #[serde(rename = "type")]
    pub kind: RouteKind,
    /// MQTT only: the broker as `host:port` (`[v6addr]:port` for IPv6); the port defaults to 1883.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// MQTT only: the first topic level. Alerts go to `{prefix}/{store}/{camera}/{kind}`, camera states
    /// (retained) to `{prefix}/{store}/{camera}/state`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// MQTT only: the client id; `lpmesh-<node>` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Webhook only: `http://` (LAN receivers) or `https://` (system roots) URL that alerts are POSTed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Webhook only: a file holding the secret shared with the receiver. Each POST then carries
    /// `X-Lpmesh-Timestamp` (Unix seconds) and `X-Lpmesh-Signature: v1=<hex HMAC-SHA256 of
    /// "<timestamp>.<body>">`, so the receiver can refuse forged and replayed alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
    /// A PEM file of the certificate authorities the receiver's certificate must chain to (an https
    /// webhook, or an MQTT broker with `tls`), instead of the system's: a company's own CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// MQTT only: connect over TLS (the broker's port for it, usually 8883, goes in `broker`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// MQTT only: the user name the broker knows this node by, with `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// MQTT only: a file holding that user's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// Alerts below this severity are not sent on this route.
    #[serde(default = "default_min_severity")]
    pub min_severity: Severity,
    /// Only these kinds are sent; empty means every kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<EventKind>,
    /// When the route is staffed, as `"HH:MM-HH:MM"` ranges in the store's time zone; a range whose end
    /// is not after its start runs past midnight. Empty means always.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hours: Vec<String>,
    /// After an alert for a camera + zone + kind, further ones for the same camera + zone + kind are
    /// held back for this long. 0 sends every alert.
    #[serde(default = "default_cooldown_secs")]
    pub cooldown_secs: f64,
}

fn default_topic_prefix() -> String {
    "lpmesh".into()
}

fn default_min_severity() -> Severity {
    Severity::Medium
}

fn default_cooldown_secs() -> f64 {
    60.0
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            kind: RouteKind::Console,
            broker: None,
            topic_prefix: default_topic_prefix(),
            client_id: None,
            url: None,
            secret_file: None,
            ca_file: None,
            tls: false,
            username: None,
            password_file: None,
            min_severity: default_min_severity(),
            kinds: Vec::new(),
            hours: Vec::new(),
            cooldown_secs: default_cooldown_secs(),
        }
    }
}

/// The secret in a route's `secret_file` or `password_file` (surrounding whitespace trimmed): at
/// least `min` bytes, at most 4 KiB.
pub fn read_secret(path: &str, min: usize) -> Result<Vec<u8>, SecretError> {
    let bytes = std::fs::read(path).map_err(|source| SecretError::Read {
        path: path.to_string(),
        source,
    })?;
    if bytes.len() > 4096 {
        return Err(SecretError::TooLong(path.to_string()));
    }
    let text = String::from_utf8_lossy(&bytes);
    let secret = text.trim().as_bytes().to_vec();
    if secret.len() < min {
        return Err(SecretError::TooShort {
            path: path.to_string(),
            min,
        });
    }
    Ok(secret)
}

/// Why [`read_secret`] found no secret in a file.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: more than 4 KiB: not a secret")]
    TooLong(String),
    #[error("{path}: a secret of at least {min} characters (e.g. `openssl rand -hex 32`)")]
    TooShort { path: String, min: usize },
}

/// Why [`client_tls`] could not build a TLS client configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    // The file's own error names its path; "ca_file" says which setting it came from.
    #[error("ca_file {0}")]
    CaFile(lpmesh_web::tls::ClientTlsError),
    #[error("no system root certificates found (install ca-certificates)")]
    NoSystemRoots,
    #[error("{0}")]
    Setup(lpmesh_web::tls::ClientTlsError),
}

/// A TLS client configuration that trusts `ca_file`'s certificates, or the system's without one.
pub fn client_tls(ca_file: Option<&str>) -> Result<std::sync::Arc<rustls::ClientConfig>, TlsError> {
    let roots = lpmesh_web::tls::trust_roots(ca_file.map(std::path::Path::new)).map_err(TlsError::CaFile)?;
    // A route with no roots could never connect: say why at start, not at the first alert.
    if roots.is_empty() {
        return Err(TlsError::NoSystemRoots);
    }
    Ok(std::sync::Arc::new(
        lpmesh_web::tls::client_config(roots).map_err(TlsError::Setup)?,
    ))
}

/// Splits `host[:port]` / `[v6]:port`. The host keeps IPv6 brackets because that is the form a socket
/// address lookup wants back.
pub fn parse_broker(s: &str) -> Result<(String, u16), BrokerError> {
    let bad = |why: &'static str| BrokerError {
        text: s.to_string(),
        why,
    };
    let s = s.trim();
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s.contains("://") {
        return Err(bad("give host:port, without a scheme"));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        if h.is_empty() {
            return Err(bad("empty host"));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("expected :port after ]"))?),
        };
        (format!("[{h}]"), port)
    } else {
        match s.split_once(':') {
            None => (s.to_string(), None),
            Some((h, p)) => {
                if p.contains(':') {
                    return Err(bad("write IPv6 addresses in brackets, e.g. [::1]:1883"));
                }
                (h.to_string(), Some(p))
            }
        }
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(bad("bad host"));
    }
    let port = match port {
        None => DEFAULT_MQTT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("the port must be a number from 1 to 65535")),
            Ok(n) => n,
        },
    };
    Ok((host, port))
}

/// A broker address that is not `host[:port]`: the text as given, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a broker address like \"host:1883\": {why}")]
pub struct BrokerError {
    pub text: String,
    pub why: &'static str,
}

/// Checks that a webhook URL is `http(s)://host...`.
pub fn parse_webhook_url(s: &str) -> Result<hyper::Uri, UrlError> {
    let uri: hyper::Uri = s.parse().map_err(|source| UrlError::Invalid {
        text: s.to_string(),
        source,
    })?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(UrlError::Scheme(s.to_string())),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(UrlError::NoHost(s.to_string()));
    }
    Ok(uri)
}

/// A webhook URL that [`parse_webhook_url`] refused (each variant holds the text as given).
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("{text:?} is not a URL: {source}")]
    Invalid {
        text: String,
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    #[error("{0:?} must start with http:// or https://")]
    Scheme(String),
    #[error("{0:?} has no host")]
    NoHost(String),
}

impl AlertsConfig {
    /// Every problem with the routes, as (dotted field, message); empty when the section is usable.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        // Two MQTT sessions with one client id on one broker take each other's session over in a loop.
        let mut sessions: HashMap<(String, u16, Option<&str>), usize> = HashMap::new();
        for (i, r) in self.route.iter().enumerate() {
            let at = |f: &str| format!("alerts.route[{i}].{f}");
            let mut err = |f: &str, m: String| out.push((at(f), m));
            if r.name.trim().is_empty() {
                err("name", "a route needs a name".into());
            } else if let Some(first) = names.insert(r.name.as_str(), i) {
                err(
                    "name",
                    format!("route name {:?} is already used by alerts.route[{first}]", r.name),
                );
            }
            let only = |field: &str, kind: &str| format!("`{field}` is only for {kind} routes");
            match r.kind {
                RouteKind::Mqtt => {
                    match r.broker.as_deref() {
                        None => err("broker", "an mqtt route needs `broker` (host:port)".into()),
                        Some(b) => match parse_broker(b) {
                            Err(m) => err("broker", m.to_string()),
                            Ok((host, port)) => {
                                let id = r.client_id.as_deref();
                                if let Some(first) = sessions.insert((host.to_ascii_lowercase(), port, id), i) {
                                    err(
                                        "client_id",
                                        format!(
                                            "alerts.route[{first}] uses the same broker and client id; give each \
                                             mqtt route its own `client_id`"
                                        ),
                                    );
                                }
                            }
                        },
                    }
                    let p = &r.topic_prefix;
                    if p.is_empty() || p.starts_with('/') || p.ends_with('/') || p.contains(['+', '#', '\0']) {
                        err(
                            "topic_prefix",
                            format!("{p:?} must be non-empty, without wildcards (+ #) or a leading/trailing /"),
                        );
                    }
                    if let Some(id) = &r.client_id {
                        if id.is_empty() || id.starts_with(' ') {
                            err("client_id", "must be non-empty and not start with a space".into());
                        }
                    }
                    if r.url.is_some() {
                        err("url", only("url", "webhook"));
                    }
                    if r.secret_file.is_some() {
                        err("secret_file", only("secret_file", "webhook"));
                    }
                    if r.ca_file.is_some() && !r.tls {
                        err("ca_file", "only with tls = true".into());
                    }
                    match (&r.username, &r.password_file) {
                        (Some(_), None) => err("password_file", "a username needs `password_file`".into()),
                        (None, Some(_)) => err("username", "`password_file` needs a `username`".into()),
                        (Some(u), Some(f)) => {
                            if u.is_empty() || u.len() > 128 {
                                err("username", "1 to 128 characters".into());
                            }
                            if let Err(m) = read_secret(f, 1) {
                                err("password_file", m.to_string());
                            }
                            let loopback = r
                                .broker
                                .as_deref()
                                .and_then(|b| parse_broker(b).ok())
                                .is_some_and(|(h, _)| matches!(h.as_str(), "127.0.0.1" | "localhost" | "[::1]"));
                            if !r.tls && !loopback {
                                err(
                                    "tls",
                                    "a password to a broker on the network needs tls = true (it would cross the LAN in clear)"
                                        .into(),
                                );
                            }
                        }
                        (None, None) => {}
                    }
                }
                RouteKind::Webhook => {
                    match r.url.as_deref() {
                        None => err("url", "a webhook route needs `url` (http:// or https://)".into()),
                        Some(u) => {
                            if let Err(m) = parse_webhook_url(u) {
                                err("url", m.to_string());
                            } else if r.ca_file.is_some() && !u.starts_with("https://") {
                                err("ca_file", "only for an https:// url".into());
                            }
                        }
                    }
                    if let Some(f) = &r.secret_file {
                        if let Err(m) = read_secret(f, 16) {
                            err("secret_file", m.to_string());
                        }
                    }
                }
                RouteKind::Console => {
                    if r.url.is_some() {
                        err("url", only("url", "webhook"));
                    }
                    if r.secret_file.is_some() {
                        err("secret_file", only("secret_file", "webhook"));
                    }
                    if r.ca_file.is_some() {
                        err("ca_file", "only for webhook and mqtt routes".into());
                    }
                }
            }
            if r.kind != RouteKind::Mqtt {
                for (set, field) in [
                    (r.broker.is_some(), "broker"),
                    (r.client_id.is_some(), "client_id"),
                    (r.tls, "tls"),
                    (r.username.is_some(), "username"),
                    (r.password_file.is_some(), "password_file"),
                ] {
                    if set {
                        err(field, only(field, "mqtt"));
                    }
                }
            }
            for (j, h) in r.hours.iter().enumerate() {
                if let Err(m) = Schedule::parse_range(h) {
                    err(&format!("hours[{j}]"), m.to_string());
                }
            }
            if !r.cooldown_secs.is_finite() || r.cooldown_secs < 0.0 {
                err("cooldown_secs", format!("{} must be a number >= 0", r.cooldown_secs));
            } else if r.cooldown_secs > 7.0 * 86_400.0 {
                err("cooldown_secs", format!("{} is more than a week", r.cooldown_secs));
            }
        }
        out
    }
}
