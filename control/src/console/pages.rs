//! The four pages. Each returns the whole HTML document; every string that comes from
//! the store, a worker or a client goes through [`html::esc`].
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
};

use super::{
    html::{self, esc, Series, Stretch},
    query::{self, By, Event, Target},
    Console,
};
use crate::{model::Price, store::now_ms, usage, Error};

/// The windows a page offers: (query value, length).
const WINDOWS: [(&str, i64); 4] = [
    ("1h", 3_600_000),
    ("6h", 6 * 3_600_000),
    ("24h", 24 * 3_600_000),
    ("7d", 7 * 24 * 3_600_000),
];

fn window_of(s: &str) -> (&'static str, i64) {
    WINDOWS.into_iter().find(|(k, _)| *k == s).unwrap_or(WINDOWS[0])
}

/// Chart bucket for a window: 30 to 36 bars.
fn bucket_of(window_ms: i64) -> i64 {
    match window_ms {
        w if w <= 3_600_000 => 120_000,
        w if w <= 6 * 3_600_000 => 600_000,
        w if w <= 24 * 3_600_000 => 3_600_000,
        _ => 6 * 3_600_000,
    }
}

/// Links to the same page with each window, the current one marked.
fn window_links(path: &str, current: &str, extra: &str) -> String {
    let mut s = String::from("<p class=\"choice\">Window: ");
    for (w, _) in WINDOWS {
        let cls = if w == current { " class=\"active\"" } else { "" };
        let _ = write!(s, "<a href=\"{path}?window={w}{extra}\"{cls}>{w}</a> ");
    }
    s.push_str("</p>");
    s
}

pub fn fleet(c: &Console) -> String {
    let (version, hash) = {
        let p = c.snapshots.borrow();
        (p.version, p.hash.clone())
    };
    let now = now_ms();
    let workers = c.registry.list();
    let connected = workers.iter().filter(|w| w.connections > 0).count();
    let in_sync = workers
        .iter()
        .filter(|w| w.connections > 0 && w.applied_version == version && w.applied_hash == hash)
        .count();
    let mut b = format!(
        "<p class=\"summary\" id=\"fleet-summary\">Config version <b data-version=\"{version}\">{version}</b> \
         (hash <code>{h}</code>): <b>{connected}</b> worker(s) connected, <b>{in_sync}</b> in sync.</p>",
        h = esc(hash.get(..12).unwrap_or(hash.as_str())),
    );
    b.push_str(
        "<table id=\"workers\"><thead><tr><th>worker</th><th>address</th><th>software</th><th>applied version</th>\
         <th>state</th><th>last seen</th><th>last rejection</th></tr></thead><tbody>",
    );
    for w in &workers {
        let state = if w.connections == 0 {
            ("disconnected", "muted")
        } else if w.applied_version == version && w.applied_hash == hash {
            ("in sync", "ok")
        } else {
            ("behind", "warn")
        };
        let rejection = if w.rejected_version == 0 {
            "-".to_string()
        } else {
            format!(
                "version {} {}: {}",
                w.rejected_version,
                esc(&html::ago(now, w.rejected_at_ms)),
                esc(&w.rejected_reason)
            )
        };
        let _ = write!(
            b,
            "<tr data-worker=\"{id}\"><td>{id}</td><td>{addr}</td><td>{sw}</td>\
             <td data-col=\"applied\">{applied}</td><td data-col=\"state\" class=\"{cls}\">{st}</td>\
             <td title=\"{seen}\">{ago}</td><td data-col=\"rejection\">{rejection}</td></tr>",
            id = esc(&w.worker_id),
            addr = esc(&w.address),
            sw = esc(&w.software_version),
            applied = w.applied_version,
            cls = state.1,
            st = state.0,
            seen = esc(&html::time(w.last_seen_ms)),
            ago = esc(&html::ago(now, w.last_seen_ms)),
        );
    }
    if workers.is_empty() {
        b.push_str("<tr><td colspan=\"7\" class=\"muted\">No worker has connected yet.</td></tr>");
    }
    b.push_str("</tbody></table>");
    html::page("Fleet", "/console/fleet", &b)
}

fn target_of(t: &switchyard_proto::v1::TargetHealth) -> Target {
    Target {
        kind: t.kind.clone(),
        model: t.model.clone(),
        backend: t.backend.clone(),
        provider: t.provider.clone(),
        credential: t.credential.clone(),
    }
}

fn target_name(t: &Target) -> String {
    if t.kind == "backend" {
        format!("{}/{}", t.model, t.backend)
    } else {
        format!("{}/{}", t.provider, t.credential)
    }
}

/// The stretches of a target's timeline over `[from, to)`. `counted` are the workers
/// whose view counts (as in GetHealth: the connected ones, else every worker that
/// reported about the target); a worker without an event sees the target healthy.
pub fn stretches(
    from_ms: i64,
    to_ms: i64,
    counted: &HashSet<&str>,
    start: &[&Event],
    events: &[&Event],
) -> Vec<Stretch> {
    let mut sick: HashSet<&str> = start
        .iter()
        .filter(|e| !e.healthy && counted.contains(e.worker_id.as_str()))
        .map(|e| e.worker_id.as_str())
        .collect();
    let total = counted.len();
    let mut out = Vec::new();
    let mut cur = from_ms;
    for e in events {
        if !counted.contains(e.worker_id.as_str()) {
            continue;
        }
        let before = sick.len();
        if e.healthy {
            sick.remove(e.worker_id.as_str());
        } else {
            sick.insert(e.worker_id.as_str());
        }
        if sick.len() != before {
            if e.ts_ms > cur {
                out.push(Stretch {
                    from_ms: cur,
                    to_ms: e.ts_ms,
                    healthy: total - before.min(total),
                    total,
                });
            }
            cur = e.ts_ms.max(cur);
        }
    }
    out.push(Stretch {
        from_ms: cur,
        to_ms: to_ms.max(cur),
        healthy: total - sick.len().min(total),
        total,
    });
    out
}

pub async fn health(c: &Console, window: &str) -> Result<String, Error> {
    let (wname, wms) = window_of(window);
    let now = now_ms();
    let from = now - wms;
    let snapshot = c.snapshots.borrow().snapshot.clone();
    let connected: HashSet<String> = c
        .registry
        .list()
        .into_iter()
        .filter(|w| w.connections > 0)
        .map(|w| w.worker_id)
        .collect();
    let targets = usage::get_health(c.store.pool(), &snapshot, &connected, None).await?;
    let (start, events) = query::health_window(c.store.pool(), from).await?;
    let mut start_of: HashMap<&Target, Vec<&Event>> = HashMap::new();
    for e in &start {
        start_of.entry(&e.target).or_default().push(e);
    }
    let mut events_of: HashMap<&Target, Vec<&Event>> = HashMap::new();
    for e in &events {
        events_of.entry(&e.target).or_default().push(e);
    }
    let mut b = window_links("/console/health", wname, "");
    let _ = write!(
        b,
        "<p class=\"summary\">Since {} (UTC). Green: healthy on every worker; amber: on some; red: on none. \
         A tick marks each change.</p>",
        esc(&html::time(from))
    );
    if events.len() >= query::MAX_EVENTS {
        let _ = write!(
            b,
            "<p class=\"warn\">More than {} changes in this window: the timelines show the oldest of them only.</p>",
            query::MAX_EVENTS
        );
    }
    b.push_str(
        "<table id=\"health\"><thead><tr><th>kind</th><th>target</th><th>healthy</th><th>timeline</th>\
         <th>last reason</th></tr></thead><tbody>",
    );
    let empty = Vec::new();
    for t in &targets {
        let key = target_of(t);
        let st = start_of.get(&key).unwrap_or(&empty);
        let ev = events_of.get(&key).unwrap_or(&empty);
        let counted: HashSet<&str> = if connected.is_empty() {
            st.iter().chain(ev.iter()).map(|e| e.worker_id.as_str()).collect()
        } else {
            connected.iter().map(String::as_str).collect()
        };
        let s = stretches(from, now, &counted, st, ev);
        let ticks: Vec<i64> = ev.iter().map(|e| e.ts_ms).collect();
        let name = target_name(&key);
        let cls = if t.healthy_workers == t.total_workers {
            "ok"
        } else if t.healthy_workers == 0 {
            "bad"
        } else {
            "warn"
        };
        let _ = write!(
            b,
            "<tr data-target=\"{kind}:{n}\" data-healthy=\"{h}\" data-total=\"{tot}\" data-changes=\"{ch}\" \
             data-unhealthy-stretches=\"{sick}\">\
             <td>{kind}</td><td>{n}</td><td class=\"{cls}\">{h} of {tot}</td><td>{svg}</td><td>{r}</td></tr>",
            kind = esc(&t.kind),
            n = esc(&name),
            h = t.healthy_workers,
            tot = t.total_workers,
            ch = ev.len(),
            sick = s.iter().filter(|s| s.healthy < s.total).count(),
            svg = html::timeline(from, now, &s, &ticks),
            r = esc(&t.last_reason),
        );
        if !ev.is_empty() {
            b.push_str("<tr class=\"changes\"><td></td><td colspan=\"4\"><ul>");
            for e in ev.iter().rev().take(20) {
                let _ = write!(
                    b,
                    "<li><span class=\"{cls}\">{state}</span> on <b>{w}</b> at {t}: {r}</li>",
                    cls = if e.healthy { "ok" } else { "bad" },
                    state = if e.healthy { "healthy" } else { "unhealthy" },
                    w = esc(&e.worker_id),
                    t = esc(&html::time(e.ts_ms)),
                    r = esc(&e.reason),
                );
            }
            if ev.len() > 20 {
                let _ = write!(
                    b,
                    "<li class=\"muted\">and {} earlier changes</li>",
                    ev.len() - 20
                );
            }
            b.push_str("</ul></td></tr>");
        }
    }
    if targets.is_empty() {
        b.push_str("<tr><td colspan=\"5\" class=\"muted\">No backends or credentials configured.</td></tr>");
    }
    b.push_str("</tbody></table>");
    Ok(html::page("Health", "/console/health", &b))
}

pub async fn traffic(c: &Console, window: &str, by: &str) -> Result<String, Error> {
    let by = By::parse(by).unwrap_or(By::Key);
    let (wname, wms) = window_of(window);
    let bucket = bucket_of(wms);
    let now = now_ms();
    // Whole buckets, so that the table and the charts sum the same records.
    let from = (now - wms).div_euclid(bucket) * bucket;
    // Built as the Admin RPC builds it, so the totals are QueryUsage's.
    let q = usage::UsageQuery::from_proto(&switchyard_proto::v1::QueryUsageRequest {
        from_ms: from,
        group_by: by.as_str().into(),
        ..Default::default()
    })?;
    let rows = usage::query_usage(c.store.pool(), &q).await?;
    let ttfb = query::ttfb(c.store.pool(), from, i64::MAX, by).await?;
    let sums = query::buckets(c.store.pool(), from, i64::MAX, bucket, by).await?;

    let mut b = window_links("/console/traffic", wname, &format!("&by={}", by.as_str()));
    b.push_str("<p class=\"choice\">By: ");
    for x in By::available() {
        let cls = if x == by { " class=\"active\"" } else { "" };
        let _ = write!(
            b,
            "<a href=\"/console/traffic?window={wname}&by={n}\"{cls}>{n}</a> ",
            n = x.as_str()
        );
    }
    b.push_str("</p>");
    let _ = write!(
        b,
        "<p class=\"summary\">Since {} (UTC), in buckets of {} min.</p>",
        esc(&html::time(from)),
        bucket / 60_000
    );

    // Charts: the busiest groups get a colour each, the rest are summed as "other".
    let starts: Vec<i64> = (0..)
        .map(|i| from + i * bucket)
        .take_while(|t| *t <= now)
        .collect();
    let mut order: Vec<&usage::UsageSummary> = rows.iter().collect();
    order.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.group.cmp(&b.group)));
    let top: Vec<&str> = order.iter().take(7).map(|r| r.group.as_str()).collect();
    let series_of = |f: &dyn Fn(&query::Bucket) -> u64| -> Vec<Series> {
        let mut by_name: BTreeMap<usize, Series> = BTreeMap::new();
        for ((t, g), s) in &sums {
            let Ok(i) = usize::try_from((t - from) / bucket) else {
                continue;
            };
            if i >= starts.len() {
                continue;
            }
            let (slot, name) = match top.iter().position(|x| *x == g.as_str()) {
                Some(p) => (p, if g.is_empty() { "(none)" } else { g.as_str() }),
                None => (top.len(), "other"),
            };
            let e = by_name.entry(slot).or_insert_with(|| Series {
                name: name.to_string(),
                values: vec![0; starts.len()],
            });
            e.values[i] += f(s);
        }
        by_name.into_values().collect()
    };
    let count = |v: u64| v.to_string();
    b.push_str("<div class=\"charts\">");
    b.push_str(&html::bar_chart(
        "Requests",
        &starts,
        &series_of(&|s: &query::Bucket| s.requests),
        &count,
    ));
    b.push_str(&html::bar_chart(
        "Errors",
        &starts,
        &series_of(&|s: &query::Bucket| s.errors),
        &count,
    ));
    b.push_str(&html::bar_chart(
        "Tokens",
        &starts,
        &series_of(&|s: &query::Bucket| s.tokens),
        &count,
    ));
    b.push_str(&html::bar_chart(
        "Cost",
        &starts,
        &series_of(&|s: &query::Bucket| s.cost_nano),
        &html::cost,
    ));
    b.push_str("</div>");

    let _ = write!(
        b,
        "<table id=\"traffic\"><thead><tr><th>{}</th><th>requests</th><th>errors</th><th>prompt tokens</th>\
         <th>completion tokens</th><th>total tokens</th><th>cost</th><th>unpriced</th>\
         <th>p50 ms</th><th>p95 ms</th><th>TTFB p50 ms</th><th>TTFB p95 ms</th></tr></thead><tbody>",
        by.as_str()
    );
    let mut total = usage::UsageSummary::default();
    for r in &rows {
        let (t50, t95) = ttfb.get(&r.group).copied().unwrap_or((0.0, 0.0));
        let _ = write!(
            b,
            "<tr data-group=\"{g}\"><td>{g}</td><td data-col=\"requests\">{}</td><td data-col=\"errors\">{}</td>\
             <td data-col=\"prompt_tokens\">{}</td><td data-col=\"completion_tokens\">{}</td>\
             <td data-col=\"total_tokens\">{}</td><td data-col=\"cost_nano\" data-value=\"{}\">{}</td>\
             <td data-col=\"unpriced_requests\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.requests,
            r.errors,
            r.prompt_tokens,
            r.completion_tokens,
            r.total_tokens,
            r.cost_nano,
            html::cost(r.cost_nano),
            r.unpriced_requests,
            html::ms(r.p50_latency_ms),
            html::ms(r.p95_latency_ms),
            html::ms(t50),
            html::ms(t95),
            g = esc(&r.group),
        );
        total.requests += r.requests;
        total.errors += r.errors;
        total.prompt_tokens += r.prompt_tokens;
        total.completion_tokens += r.completion_tokens;
        total.total_tokens += r.total_tokens;
        total.cost_nano += r.cost_nano;
        total.unpriced_requests += r.unpriced_requests;
    }
    if rows.is_empty() {
        b.push_str("<tr><td colspan=\"12\" class=\"muted\">No requests in this window.</td></tr>");
    }
    let _ = write!(
        b,
        "</tbody><tfoot><tr id=\"traffic-total\"><th>total</th><td data-col=\"requests\">{}</td>\
         <td data-col=\"errors\">{}</td><td data-col=\"prompt_tokens\">{}</td><td data-col=\"completion_tokens\">{}</td>\
         <td data-col=\"total_tokens\">{}</td><td data-col=\"cost_nano\" data-value=\"{}\">{}</td>\
         <td data-col=\"unpriced_requests\">{}</td><td colspan=\"4\"></td></tr></tfoot></table>\
         <p class=\"hint\">Costs are in the currency of the configured prices; unpriced requests (tokens but no price) \
         are counted apart, not as free. Percentiles cover raw records only (hours rolled up by the retention keep none).</p>",
        total.requests,
        total.errors,
        total.prompt_tokens,
        total.completion_tokens,
        total.total_tokens,
        total.cost_nano,
        html::cost(total.cost_nano),
        total.unpriced_requests,
    );
    Ok(html::page("Traffic", "/console/traffic", &b))
}

/// A price per million tokens, as the config file writes it.
fn per_mtok(nano: u64) -> String {
    let s = format!("{}.{:03}", nano / 1000, nano % 1000);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn price(p: Option<&Price>) -> String {
    match p {
        None => "-".into(),
        Some(p) => format!("in {} / out {}", per_mtok(p.input), per_mtok(p.output)),
    }
}

pub async fn config(c: &Console) -> Result<String, Error> {
    let (version, state) = c.store.load_consistent().await?;
    let published = c.snapshots.borrow().version;
    let now = now_ms();
    let mut b = format!(
        "<p class=\"summary\">Stored version <b id=\"config-version\">{version}</b>; published snapshot {published}. \
         {} models, {} providers, {} keys.</p>",
        state.models.len(),
        state.providers.len(),
        state.keys.len(),
    );
    b.push_str("<h2>Models</h2>");
    for m in state.models.values() {
        let _ = write!(
            b,
            "<section class=\"model\" data-model=\"{n}\"><h3>{n}{dis}</h3><p>strategy <b data-col=\"strategy\">{s}</b>, \
             {r} retries{aff}{al}{pr}</p>",
            n = esc(&m.name),
            dis = if m.spec.enabled { "" } else { " <span class=\"muted\">(disabled)</span>" },
            s = esc(m.spec.strategy.as_str()),
            r = m.spec.retry.max_retries,
            aff = if m.spec.affinity.header.is_empty() {
                String::new()
            } else {
                format!(", affinity on <code>{}</code>", esc(&m.spec.affinity.header))
            },
            al = if m.spec.aliases.is_empty() {
                String::new()
            } else {
                format!(", aliases {}", esc(&m.spec.aliases.join(", ")))
            },
            pr = if m.spec.price.is_some() {
                format!(", price {} per Mtok", price(m.spec.price.as_ref()))
            } else {
                String::new()
            },
        );
        let mut backends: Vec<_> = m.backends.values().collect();
        backends.sort_by(|a, b| a.spec.priority.cmp(&b.spec.priority).then(a.name.cmp(&b.name)));
        b.push_str(
            "<table class=\"backends\"><thead><tr><th>tier</th><th>backend</th><th>provider</th><th>upstream model</th>\
             <th>weight</th><th>enabled</th><th>price per Mtok</th></tr></thead><tbody>",
        );
        for be in backends {
            let _ = write!(
                b,
                "<tr data-backend=\"{n}\"><td data-col=\"tier\">{t}</td><td>{n}</td><td>{p}</td><td>{u}</td>\
                 <td data-col=\"weight\">{w}</td><td>{e}</td><td>{pr}</td></tr>",
                t = be.spec.priority,
                n = esc(&be.name),
                p = esc(&be.spec.provider),
                u = esc(&be.spec.upstream_model),
                w = be.spec.weight,
                e = if be.spec.enabled { "yes" } else { "no" },
                pr = esc(&price(be.spec.price.as_ref())),
            );
        }
        b.push_str("</tbody></table></section>");
    }
    b.push_str(
        "<h2>Providers</h2><table id=\"providers\"><thead><tr><th>provider</th><th>kind</th><th>host</th>\
         <th>credentials (weight)</th><th>credential strategy</th><th>health probe</th><th>enabled</th></tr></thead><tbody>",
    );
    for p in state.providers.values() {
        // The host only: a base URL may carry userinfo.
        let host = url::Url::parse(&p.spec.base_url)
            .ok()
            .and_then(|u| {
                u.host_str()
                    .map(|h| format!("{h}{}", u.port().map(|p| format!(":{p}")).unwrap_or_default()))
            })
            .unwrap_or_default();
        let creds = p
            .credentials
            .values()
            .map(|c| {
                format!(
                    "{} ({}){}",
                    c.name,
                    c.spec.weight,
                    if c.spec.enabled { "" } else { " disabled" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let probe = if p.spec.health.enabled {
            format!("{} every {} ms", p.spec.health.probe, p.spec.health.interval_ms)
        } else {
            "off".into()
        };
        let _ = write!(
            b,
            "<tr data-provider=\"{n}\"><td>{n}</td><td>{k}</td><td>{h}</td><td>{c}</td><td>{s}</td><td>{pr}</td><td>{e}</td></tr>",
            n = esc(&p.name),
            k = esc(p.spec.kind.as_str()),
            h = esc(&host),
            c = esc(&creds),
            s = esc(p.spec.credential_strategy.as_str()),
            pr = esc(&probe),
            e = if p.spec.enabled { "yes" } else { "no" },
        );
    }
    b.push_str("</tbody></table>");

    // The store keeps the current version only, not what each version changed; the
    // objects' own update times are the record of recent changes.
    let mut changes: Vec<(i64, &str, String, &str)> = Vec::new();
    let mut add = |created: i64, updated: i64, kind: &'static str, name: String| {
        let what = if updated > created { "updated" } else { "created" };
        changes.push((updated.max(created), kind, name, what));
    };
    for p in state.providers.values() {
        add(p.created_at_ms, p.updated_at_ms, "provider", p.name.clone());
        for cr in p.credentials.values() {
            add(
                cr.created_at_ms,
                cr.updated_at_ms,
                "credential",
                format!("{}/{}", p.name, cr.name),
            );
        }
    }
    for m in state.models.values() {
        add(m.created_at_ms, m.updated_at_ms, "model", m.name.clone());
        for be in m.backends.values() {
            add(
                be.created_at_ms,
                be.updated_at_ms,
                "backend",
                format!("{}/{}", m.name, be.name),
            );
        }
    }
    for k in state.keys.values() {
        add(k.created_at_ms, k.created_at_ms, "key", k.name.clone());
    }
    changes.sort_by(|a, b| b.0.cmp(&a.0).then(a.2.cmp(&b.2)));
    b.push_str(
        "<h2>Recent changes</h2><p class=\"hint\">The store keeps the current version, not what each version changed: \
         these are the objects by their last change (deletions are not listed).</p>\
         <table id=\"changes\"><thead><tr><th>when</th><th>kind</th><th>name</th><th>change</th></tr></thead><tbody>",
    );
    for (t, kind, name, what) in changes.iter().take(25) {
        let _ = write!(
            b,
            "<tr><td title=\"{ts}\">{ago}</td><td>{kind}</td><td>{n}</td><td>{what}</td></tr>",
            ts = esc(&html::time(*t)),
            ago = esc(&html::ago(now, *t)),
            n = esc(name),
        );
    }
    b.push_str("</tbody></table>");
    Ok(html::page("Config", "/console/config", &b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: i64, w: &str, healthy: bool) -> Event {
        Event {
            id: format!("{ts:020}{w}"),
            ts_ms: ts,
            worker_id: w.into(),
            target: Target {
                kind: "backend".into(),
                model: "m".into(),
                backend: "b".into(),
                provider: "p".into(),
                credential: String::new(),
            },
            healthy,
            reason: String::new(),
        }
    }

    #[test]
    fn timeline_counts_workers_and_carries_the_start_state() {
        let counted: HashSet<&str> = ["w0", "w1"].into_iter().collect();
        let start = [ev(-5, "w0", false)];
        let events = [
            ev(10, "w1", false),
            ev(20, "w0", true),
            ev(30, "w9", false),
            ev(40, "w1", true),
        ];
        let s = stretches(
            0,
            100,
            &counted,
            &start.iter().collect::<Vec<_>>(),
            &events.iter().collect::<Vec<_>>(),
        );
        let got: Vec<(i64, i64, usize)> = s.iter().map(|s| (s.from_ms, s.to_ms, s.healthy)).collect();
        // w9 is not counted; w0 starts sick.
        assert_eq!(got, vec![(0, 10, 1), (10, 20, 0), (20, 40, 1), (40, 100, 2)]);
        assert!(s.iter().all(|s| s.total == 2));
    }

    #[test]
    fn prices_print_as_in_the_file() {
        assert_eq!(per_mtok(2500), "2.5");
        assert_eq!(per_mtok(10_000), "10");
        assert_eq!(per_mtok(75), "0.075");
    }
}
