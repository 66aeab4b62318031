//! The console route: one line per alert on stdout (the demo, and stores without a broker).

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::queue::{close_deadline, idle, CloseSignal, RouteShared};
use super::Alert;

pub struct ConsoleRoute {
    tz: Tz,
}

impl ConsoleRoute {
    pub fn new(tz: Tz) -> Self {
        Self { tz }
    }

    /// `ALERT 21:04:05 HIGH exit_without_checkout at camera door, zone exit  http://...`, the time in the
    /// store's zone.
    pub fn line(&self, a: &Alert) -> String {
        let at = DateTime::<Utc>::from_timestamp_millis(a.at_ms)
            .map(|t| self.tz.from_utc_datetime(&t.naive_utc()).format("%H:%M:%S").to_string())
            .unwrap_or_else(|| "--:--:--".into());
        format!("ALERT {at} {}  {}", a.text, a.link)
    }

    pub async fn run(self, shared: Arc<RouteShared>, mut close: CloseSignal) {
        loop {
            if close_deadline(&close).is_some_and(|d| std::time::Instant::now() >= d) {
                break;
            }
            let Some(alert) = shared.pop_alert() else {
                if close_deadline(&close).is_some() || idle(&shared, &mut close).await {
                    break;
                }
                continue;
            };
            let line = self.line(&alert);
            // stdout can block (a full pipe); that must hold up this route only, not a runtime worker.
            let written = tokio::task::spawn_blocking(move || {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}").and_then(|()| out.flush())
            })
            .await;
            match written {
                Ok(Ok(())) => {
                    shared.sent.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(route = %shared.name, "cannot write an alert to stdout: {e}");
                }
                Err(e) => {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(route = %shared.name, "console writer failed: {e}");
                }
            }
        }
        let mut left = 0u64;
        while shared.pop_alert().is_some() {
            left += 1;
        }
        if left > 0 {
            shared.count_dropped(left);
            tracing::warn!(route = %shared.name, undelivered = left, "console alert route stopped with alerts unprinted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventKind, Severity};

    #[test]
    fn one_line_with_local_time() {
        let a = Alert {
            incident: "n1/door/1-0".into(),
            store: "s".into(),
            node: "n1".into(),
            camera: "door".into(),
            zone: Some("exit".into()),
            kind: EventKind::ExitWithoutCheckout,
            severity: Severity::High,
            started_at_ms: 1_717_416_000_000,
            at_ms: 1_717_416_000_000,
            people: None,
            text: "HIGH exit_without_checkout at camera door, zone exit".into(),
            link: "http://ui/#/incident/n1%2Fdoor%2F1-0".into(),
            evidence_url: None,
        };
        let c = ConsoleRoute::new("Europe/London".parse().unwrap());
        assert_eq!(
            c.line(&a),
            "ALERT 13:00:00 HIGH exit_without_checkout at camera door, zone exit  http://ui/#/incident/n1%2Fdoor%2F1-0"
        );
    }
}
