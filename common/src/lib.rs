//! Helpers shared by `switchyard-control` and `switchyard-worker`.

pub mod passthrough;
pub mod window;

/// `prometheus_client` writes OpenMetrics; Prometheus text format 0.0.4 (what we serve,
/// and what `promtool check metrics` reads) names a counter family with its `_total`
/// suffix and has no `# EOF` or `# UNIT` lines.
pub fn to_prometheus_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + 16 * counters.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        if let Some((tag, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(tag);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(tail);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::to_prometheus_text;

    #[test]
    fn counters_get_their_total_suffix_and_openmetrics_lines_go() {
        let om = "# HELP reqs Requests.\n# TYPE reqs counter\nreqs_total 3\n# HELP up Up.\n# TYPE up gauge\n# UNIT up seconds\nup 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP reqs_total Requests.\n# TYPE reqs_total counter\nreqs_total 3\n# HELP up Up.\n# TYPE up gauge\nup 1\n"
        );
    }
}
