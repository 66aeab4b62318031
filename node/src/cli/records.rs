//! Reading what the node keeps and checks: `events`, `validate`, `eval mot`.

use crate::*;

pub fn events(data: &Path, since: Option<String>, kind: Option<String>, json: bool) -> Result<ExitCode> {
    let since_ms = match since {
        Some(s) => Some(
            chrono::DateTime::parse_from_rfc3339(&s)
                .with_context(|| format!("--since {s:?} is not an RFC 3339 time"))?
                .timestamp_millis(),
        ),
        None => None,
    };
    let events = lpmesh_node::node::read_events(data)?;
    let mut out = std::io::stdout().lock();
    for e in events
        .iter()
        .filter(|e| since_ms.is_none_or(|t| e.at_ms >= t))
        .filter(|e| kind.as_deref().is_none_or(|k| e.kind.as_str() == k))
    {
        if json {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
        } else {
            let at = chrono::DateTime::from_timestamp_millis(e.at_ms)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
            writeln!(
                out,
                "{at}  {:<8} {:<22} {:<8} {}/{}/{}  {}",
                format!("{:?}", e.severity).to_lowercase(),
                e.kind.as_str(),
                format!("{:?}", e.phase).to_lowercase(),
                e.node,
                e.camera,
                e.zone.as_deref().unwrap_or("-"),
                e.incident
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn all_records(data: &Path) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    for r in lpmesh_node::node::read_records(data)? {
        writeln!(out, "{r}")?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn validate(file: &Path) -> Result<ExitCode> {
    let checked = if is_hq_config(file) {
        lpmesh_hq::config::HqConfig::load(file)
            .and_then(|c| c.metrics_token().map(|_| "HQ configuration"))
            .map_err(anyhow::Error::from)
    } else {
        NodeConfig::load(file)
            .map(|_| "store node configuration")
            .map_err(anyhow::Error::from)
    };
    match checked {
        Ok(what) => {
            println!("{}: valid {what}", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Whether a configuration file is HQ's: it names no store and sets a key only HQ has. A file that
/// cannot be read or parsed is checked as a node's, whose reader says what is wrong with it.
pub fn is_hq_config(file: &Path) -> bool {
    const HQ_ONLY: [&str; 9] = [
        "listen",
        "dashboard_listen",
        "database_url",
        "tls_cert",
        "tls_key",
        "tls_names",
        "max_envelope_bytes",
        "export_max_days",
        "metrics_token_file",
    ];
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .is_some_and(|t| !t.contains_key("store") && HQ_ONLY.iter().any(|k| t.contains_key(*k)))
}

pub fn eval_mot(gt: &Path, tracks: &Path, frames: Option<&str>, iou: f64, json: bool) -> Result<ExitCode> {
    use lpmesh_node::eval;
    if !(iou > 0.0 && iou <= 1.0) {
        anyhow::bail!("--iou {iou}: give a value above 0 and at most 1");
    }
    let range = match frames {
        None => None,
        Some(f) => {
            let (a, b) = f
                .split_once('-')
                .and_then(|(a, b)| Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?)))
                .filter(|(a, b)| *a >= 1 && a <= b)
                .with_context(|| format!("--frames {f:?}: give A-B, 1 <= A <= B, like 1-400"))?;
            Some((a, b))
        }
    };
    let read = |p: &Path| -> Result<Vec<eval::Row>> {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        eval::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
    };
    let s = eval::evaluate(&read(gt)?, &read(tracks)?, range, iou);
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1} %", v * 100.0));
    println!(
        "frames {}, ground truth {} boxes of {} people, tracks {} boxes of {} ids (IoU >= {iou})",
        s.frames, s.gt_boxes, s.gt_ids, s.hyp_boxes, s.hyp_ids
    );
    println!(
        "MOTA {}   MOTP {} (mean IoU)   IDF1 {}   IDP {}   IDR {}",
        pct(s.mota),
        pct(s.motp),
        pct(s.idf1),
        pct(s.idp),
        pct(s.idr)
    );
    println!("recall {}   precision {}", pct(s.recall), pct(s.precision));
    println!(
        "id switches {}   fragmentations {}   false positives {}   misses {}",
        s.id_switches, s.fragmentations, s.false_positives, s.misses
    );
    println!(
        "mostly tracked {}   partially tracked {}   mostly lost {}",
        s.mostly_tracked, s.partially_tracked, s.mostly_lost
    );
    Ok(ExitCode::SUCCESS)
}
