//! HTML building blocks of the console: escaping, the page frame, number and time
//! formats, and the inline SVG charts. Everything is rendered on the server; the pages
//! carry no script at all.
use std::fmt::Write as _;

/// Escape text for an HTML text node or a quoted attribute value. Every string the
/// console renders goes through this: names come from operators, but usage rows carry
/// values a client chose (the model it asked for), and worker ids and reasons come from
/// the workers.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters have no business on a page; show them as a mark.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The pages, in the order of the navigation bar: (path, title).
pub const PAGES: [(&str, &str); 4] = [
    ("/console/fleet", "Fleet"),
    ("/console/health", "Health"),
    ("/console/traffic", "Traffic"),
    ("/console/config", "Config"),
];

/// A whole page: head, navigation (with the logout button) and `body`, which the
/// caller has built from escaped parts.
pub fn page(title: &str, active: &str, body: &str) -> String {
    let mut nav = String::new();
    for (path, name) in PAGES {
        let cls = if path == active { " class=\"active\"" } else { "" };
        let _ = write!(nav, "<a href=\"{path}\"{cls}>{name}</a>");
    }
    let logout = if active.is_empty() {
        String::new()
    } else {
        "<form method=\"post\" action=\"/console/logout\" class=\"logout\"><button type=\"submit\">Log out</button></form>"
            .to_string()
    };
    let nav = if active.is_empty() { String::new() } else { nav };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} · Switchyard</title>\
         <link rel=\"icon\" href=\"/console/assets/favicon.svg\" type=\"image/svg+xml\">\
         <link rel=\"stylesheet\" href=\"/console/assets/style.css\"></head>\
         <body><header><span class=\"brand\">Switchyard</span><nav>{nav}</nav>{logout}</header>\
         <main><h1>{t}</h1>{body}</main></body></html>\n",
        t = esc(title),
    )
}

/// `2026-12-05 15:59:18Z`, or `-` for 0.
pub fn time(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replacen('T', " ", 1)
}

/// `HH:MM` of a UTC time (chart axis labels).
pub fn clock(ms: i64) -> String {
    let s = time(ms);
    s.get(11..16).unwrap_or("").to_string()
}

/// How long ago `ms` was: `12s ago`, `3m ago`, `5h ago`, `2d ago`.
pub fn ago(now_ms: i64, ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let s = (now_ms - ms).max(0) / 1000;
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// Nano-units as a decimal amount with six places, as `switchyard spend` prints it.
pub fn cost(nano: u64) -> String {
    format!("{}.{:06}", nano / 1_000_000_000, nano % 1_000_000_000 / 1000)
}

/// Milliseconds with one decimal.
pub fn ms(v: f64) -> String {
    format!("{v:.1}")
}

/// Series colours (colour-blind friendly, Okabe–Ito), cycled.
pub const COLORS: [&str; 8] = [
    "#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#999999",
];

/// One stacked series of a bar chart.
pub struct Series {
    pub name: String,
    pub values: Vec<u64>,
}

/// A stacked bar chart as inline SVG: one bar per bucket (`starts` are the buckets'
/// first milliseconds), one colour per series, a `<title>` per bar segment for the
/// browser's own tooltip, and a legend. `fmt` formats values for the axis and tooltips.
pub fn bar_chart(label: &str, starts: &[i64], series: &[Series], fmt: &dyn Fn(u64) -> String) -> String {
    const W: f64 = 900.0;
    const H: f64 = 180.0;
    const LEFT: f64 = 70.0;
    const BOTTOM: f64 = 20.0;
    let n = starts.len().max(1);
    let totals: Vec<u64> = (0..starts.len())
        .map(|i| series.iter().map(|s| s.values.get(i).copied().unwrap_or(0)).sum())
        .collect();
    let max = totals.iter().copied().max().unwrap_or(0).max(1);
    let bw = (W - LEFT) / n as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<figure class=\"chart\" data-chart=\"{l}\"><figcaption>{l}</figcaption>\
         <svg viewBox=\"0 0 {W} {h}\" width=\"{W}\" height=\"{h}\" role=\"img\" aria-label=\"{l}\">",
        l = esc(label),
        h = H + BOTTOM,
    );
    // Axis: zero and max.
    let _ = write!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{H}\" x2=\"{W}\" y2=\"{H}\" stroke=\"#888\"/>\
         <text x=\"{x}\" y=\"12\" text-anchor=\"end\" class=\"axis\">{m}</text>\
         <text x=\"{x}\" y=\"{H}\" text-anchor=\"end\" class=\"axis\">0</text>",
        x = LEFT - 6.0,
        m = esc(&fmt(max)),
    );
    for (i, start) in starts.iter().enumerate() {
        let x = LEFT + bw * i as f64;
        let mut y = H;
        for (si, s) in series.iter().enumerate() {
            let v = s.values.get(i).copied().unwrap_or(0);
            if v == 0 {
                continue;
            }
            let h = (v as f64 / max as f64) * (H - 4.0);
            y -= h;
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{c}\">\
                 <title>{t} {name}: {v}</title></rect>",
                w = (bw - 1.0).max(1.0),
                c = COLORS[si % COLORS.len()],
                t = esc(&time(*start)),
                name = esc(&s.name),
                v = esc(&fmt(v)),
            );
        }
        // A label every few buckets.
        if i % (n / 6).max(1) == 0 && x < W - 30.0 {
            let _ = write!(
                svg,
                "<text x=\"{x:.1}\" y=\"{ly}\" class=\"axis\">{c}</text>",
                ly = H + 14.0,
                c = esc(&clock(*start)),
            );
        }
    }
    svg.push_str("</svg><div class=\"legend\">");
    for (si, s) in series.iter().enumerate() {
        let _ = write!(
            svg,
            "<span><svg width=\"10\" height=\"10\"><rect width=\"10\" height=\"10\" fill=\"{c}\"/></svg> {n}</span>",
            c = COLORS[si % COLORS.len()],
            n = esc(&s.name),
        );
    }
    svg.push_str("</div></figure>");
    svg
}

/// One stretch of a health timeline: `[from, to)` with `healthy` of `total` workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stretch {
    pub from_ms: i64,
    pub to_ms: i64,
    pub healthy: usize,
    pub total: usize,
}

/// A health timeline as one SVG strip: green where every worker sees the target
/// healthy, amber where some do, red where none does; a tick at every change. A stretch
/// is at least 3 px wide, so a failure seconds ago still shows on a week's strip.
pub fn timeline(from_ms: i64, to_ms: i64, stretches: &[Stretch], changes: &[i64]) -> String {
    const W: f64 = 600.0;
    const H: f64 = 18.0;
    let span = (to_ms - from_ms).max(1) as f64;
    let x_of = |t: i64| ((t - from_ms) as f64 / span * W).clamp(0.0, W);
    let mut svg = format!("<svg class=\"timeline\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\">");
    for s in stretches {
        let x0 = x_of(s.from_ms);
        let x1 = x_of(s.to_ms).max(x0 + 3.0).min(W);
        let x0 = x0.min(x1 - 3.0).max(0.0);
        let (color, state) = if s.total == 0 || s.healthy == s.total {
            ("#2e9d4f", "healthy")
        } else if s.healthy == 0 {
            ("#d1343a", "unhealthy")
        } else {
            ("#e0a000", "degraded")
        };
        let _ = write!(
            svg,
            "<rect x=\"{x0:.1}\" y=\"0\" width=\"{w:.1}\" height=\"{H}\" fill=\"{color}\" data-state=\"{state}\">\
             <title>{a} – {b}: healthy on {k} of {n}</title></rect>",
            w = x1 - x0,
            a = esc(&time(s.from_ms)),
            b = esc(&time(s.to_ms)),
            k = s.healthy,
            n = s.total,
        );
    }
    for t in changes {
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"0\" x2=\"{x:.1}\" y2=\"{H}\" stroke=\"#222\" stroke-width=\"1\"/>",
            x = x_of(*t),
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_quotes_and_controls() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(esc("a\u{0}b\u{1b}c"), "a\u{fffd}b\u{fffd}c");
        assert_eq!(esc("plain-name_1.2/é"), "plain-name_1.2/é");
        // An attribute cannot be broken out of.
        let attr = format!("<td title=\"{}\">", esc("\" onmouseover=\"x"));
        assert_eq!(attr, "<td title=\"&quot; onmouseover=&quot;x\">");
    }

    #[test]
    fn charts_escape_series_names() {
        let svg = bar_chart(
            "req<s>",
            &[0, 60_000],
            &[Series {
                name: "<img src=x>".into(),
                values: vec![1, 2],
            }],
            &|v| v.to_string(),
        );
        assert!(!svg.contains("<img"), "{svg}");
        assert!(svg.contains("&lt;img src=x&gt;"));
        assert!(svg.contains("req&lt;s&gt;"));
    }

    #[test]
    fn formats() {
        assert_eq!(cost(4_225_000), "0.004225");
        assert_eq!(cost(12_345_678_901), "12.345678");
        assert_eq!(time(0), "-");
        assert_eq!(time(1_764_950_400_000), "2025-12-05 16:00:00Z");
        assert_eq!(clock(1_764_950_400_000), "16:00");
        assert_eq!(ago(10_000, 7_000), "3s ago");
        assert_eq!(ago(10_000_000, 10_000_000 - 300_000), "5m ago");
    }

    #[test]
    fn a_short_failure_still_shows() {
        let svg = timeline(
            0,
            3_600_000,
            &[
                Stretch {
                    from_ms: 0,
                    to_ms: 3_599_000,
                    healthy: 2,
                    total: 2,
                },
                Stretch {
                    from_ms: 3_599_000,
                    to_ms: 3_600_000,
                    healthy: 0,
                    total: 2,
                },
            ],
            &[3_599_000],
        );
        assert!(svg.contains("data-state=\"unhealthy\""), "{svg}");
        assert!(svg.contains("width=\"3.0\""), "{svg}");
    }
}
