//! Reading Prometheus text as a scraper would.

/// Parses Prometheus text: every sample line is `name{labels} value`; returns (name+labels, value).
pub fn prometheus(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {l:?}"));
            let name_ok = series
                .split('{')
                .next()
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            assert!(name_ok, "bad metric name in {l:?}");
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {l:?}"));
            (series.to_string(), v)
        })
        .collect()
}

/// The value of one series (name with labels, exactly as printed) in parsed Prometheus samples.
pub fn metric(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_are_found_by_their_whole_series() {
        let m = super::prometheus("# TYPE a counter\na_total 3\nb{camera=\"x\"} 1.5\n# EOF\n");
        assert_eq!(super::metric(&m, "a_total"), Some(3.0));
        assert_eq!(super::metric(&m, "b{camera=\"x\"}"), Some(1.5));
        assert_eq!(super::metric(&m, "b"), None);
    }
}
