//! `switchyard limits`: quotas on requests, tokens, concurrency and money, with what the
//! fleet consumed of each in its current window (ListLimits).
use anyhow::Result;
use clap::{Args, Subcommand};
use serde::Serialize;
use switchyard_proto::v1 as pb;

use crate::{client::Admin, commands::Ctx, table, view::or_dash, UsageError};

#[derive(Debug, Args)]
pub struct LimitsArgs {
    #[command(subcommand)]
    pub cmd: Option<LimitsCmd>,
}

#[derive(Debug, Subcommand)]
pub enum LimitsCmd {
    /// List limits with the fleet's consumption in the current window (the default).
    #[command(visible_alias = "ls")]
    List,
    /// Create a limit (e.g. `limits create alice-rpm --scope key:alice --kind requests
    /// --window minute --amount 100`).
    Create(LimitCreate),
    /// Change the given fields of a limit; others stay as they are.
    Update(LimitUpdate),
    /// Delete a limit (its consumption is forgotten).
    #[command(visible_aliases = ["rm", "remove"])]
    Delete {
        /// Limit name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct LimitCreate {
    /// Unique name, `[a-z0-9][a-z0-9._-]{0,62}`.
    pub name: String,
    /// What it counts: `key:NAME`, `team:NAME`, `model:NAME` or `credential:PROVIDER/NAME`.
    #[arg(long)]
    pub scope: String,
    /// `requests`, `tokens`, `input_tokens`, `output_tokens`, `concurrency` or `spend`.
    #[arg(long)]
    pub kind: String,
    /// Calendar UTC window: `minute`, `hour`, `day` or `month` (none for `concurrency`).
    #[arg(long)]
    pub window: Option<String>,
    /// The quota per window: a count, or for `spend` units of the currency (`25`, `0.50`).
    #[arg(long)]
    pub amount: String,
    /// `enforce` (default: refuse with 429 once spent) or `observe` (count, never refuse).
    #[arg(long)]
    pub mode: Option<String>,
    /// While control is unreachable and the lease is spent: `closed` (default, refuse) or
    /// `open` (admit and count).
    #[arg(long)]
    pub on_outage: Option<String>,
    /// Free text shown in `list -o json`.
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Debug, Args)]
pub struct LimitUpdate {
    /// Limit name.
    pub name: String,
    #[arg(long)]
    pub scope: Option<String>,
    #[arg(long)]
    pub kind: Option<String>,
    /// `--window ''` for a concurrency limit.
    #[arg(long)]
    pub window: Option<String>,
    /// A count, or for `spend` units of the currency.
    #[arg(long)]
    pub amount: Option<String>,
    #[arg(long)]
    pub mode: Option<String>,
    #[arg(long)]
    pub on_outage: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
}

/// `"25"`, `"0.50"` (units of the currency) → nano-units, exactly (at most 9 decimals).
pub fn parse_money(s: &str) -> Option<u64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| d.bytes().all(|c| c.is_ascii_digit());
    let frac = frac.trim_end_matches('0');
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) || frac.len() > 9 || int.len() > 9
    {
        return None;
    }
    let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac: u64 = format!("{frac:0<9}").parse().ok()?;
    int.checked_mul(1_000_000_000)?.checked_add(frac)
}

/// An `--amount` for a limit of `kind`.
fn amount(kind: &str, s: &str) -> Result<u64> {
    let v = if kind == "spend" {
        parse_money(s)
    } else {
        s.parse::<u64>().ok()
    };
    v.ok_or_else(|| {
        let want = if kind == "spend" {
            "an amount of money in units of the currency with at most 9 decimals (e.g. 25 or 0.50)"
        } else {
            "a whole number"
        };
        UsageError(format!("--amount {s:?}: a {kind} limit takes {want}")).into()
    })
}

/// An amount as people read it: money like `spend` shows it, counts as they are.
pub fn fmt_amount(kind: &str, v: u64) -> String {
    if kind == "spend" {
        crate::price::fmt_cost(v)
    } else {
        v.to_string()
    }
}

#[derive(Debug, Serialize)]
pub struct LimitView {
    pub name: String,
    pub scope: String,
    pub kind: String,
    /// Empty for concurrency.
    pub window: String,
    /// A count, or nano-units of the currency for spend.
    pub amount: u64,
    pub mode: String,
    pub on_outage: String,
    pub description: String,
    /// Consumed fleet-wide in the current window (in flight, for concurrency).
    pub used: u64,
    /// Leased to workers and not yet consumed.
    pub leased: u64,
    pub workers: u32,
    pub refused: u64,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
}

impl From<&pb::LimitStatus> for LimitView {
    fn from(s: &pb::LimitStatus) -> Self {
        let l = s.limit.clone().unwrap_or_default();
        LimitView {
            name: l.name,
            scope: l.scope,
            kind: l.kind,
            window: l.window,
            amount: l.amount,
            mode: l.mode,
            on_outage: l.on_outage,
            description: l.description,
            used: s.used,
            leased: s.leased,
            workers: s.workers,
            refused: s.refused,
            window_start_ms: s.window_start_ms,
            window_end_ms: s.window_end_ms,
        }
    }
}

/// A limit just written: its definition (nothing consumed is known here).
fn definition(l: &pb::Limit) -> LimitView {
    LimitView::from(&pb::LimitStatus {
        limit: Some(l.clone()),
        ..Default::default()
    })
}

fn limits_table(ls: &[LimitView]) -> String {
    let rows: Vec<Vec<String>> = ls
        .iter()
        .map(|l| {
            let pct = if l.amount == 0 {
                "-".to_string()
            } else {
                format!("{}%", (u128::from(l.used) * 100 / u128::from(l.amount)))
            };
            vec![
                l.name.clone(),
                l.scope.clone(),
                l.kind.clone(),
                or_dash(&l.window),
                fmt_amount(&l.kind, l.amount),
                fmt_amount(&l.kind, l.used),
                pct,
                l.mode.clone(),
            ]
        })
        .collect();
    table::render(
        &["NAME", "SCOPE", "KIND", "WINDOW", "AMOUNT", "USED", "%", "MODE"],
        &rows,
    )
}

async fn list(admin: &mut Admin) -> Result<Vec<pb::LimitStatus>> {
    Ok(admin
        .client
        .list_limits(pb::ListLimitsRequest {})
        .await
        .map_err(|s| admin.status(s))?
        .into_inner()
        .limits)
}

fn limit_text(verb: &str, l: &pb::Limit) -> String {
    let window = if l.window.is_empty() {
        String::new()
    } else {
        format!(" per {}", l.window)
    };
    format!(
        "{verb} limit {}: {} {} {}{window} ({})\n",
        l.name,
        l.scope,
        fmt_amount(&l.kind, l.amount),
        l.kind,
        l.mode
    )
}

pub async fn limits(ctx: &Ctx, admin: &mut Admin, a: LimitsArgs) -> Result<()> {
    match a.cmd.unwrap_or(LimitsCmd::List) {
        LimitsCmd::List => {
            let views: Vec<LimitView> = list(admin).await?.iter().map(LimitView::from).collect();
            ctx.show(&views, || limits_table(&views))
        }
        LimitsCmd::Create(c) => {
            let l = pb::Limit {
                amount: amount(&c.kind, &c.amount)?,
                name: c.name,
                scope: c.scope,
                kind: c.kind,
                window: c.window.unwrap_or_default(),
                mode: c.mode.unwrap_or_default(),
                on_outage: c.on_outage.unwrap_or_default(),
                description: c.description.unwrap_or_default(),
                ..Default::default()
            };
            let l = admin
                .client
                .create_limit(pb::CreateLimitRequest { limit: Some(l) })
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            ctx.show(&definition(&l), || limit_text("created", &l))
        }
        LimitsCmd::Update(u) => {
            let mut l = pb::Limit {
                name: u.name.clone(),
                ..Default::default()
            };
            let mut mask = Vec::new();
            if let Some(v) = u.amount {
                // The unit of the amount is the kind's: the new one, else the current one.
                let kind = match &u.kind {
                    Some(k) => k.clone(),
                    None => list(admin)
                        .await?
                        .into_iter()
                        .filter_map(|s| s.limit)
                        .find(|x| x.name == u.name)
                        .map(|x| x.kind)
                        .ok_or_else(|| UsageError(format!("limit {} not found", u.name)))?,
                };
                l.amount = amount(&kind, &v)?;
                mask.push("amount");
            }
            for (v, field, path) in [
                (u.scope, &mut l.scope, "scope"),
                (u.kind, &mut l.kind, "kind"),
                (u.window, &mut l.window, "window"),
                (u.mode, &mut l.mode, "mode"),
                (u.on_outage, &mut l.on_outage, "on_outage"),
                (u.description, &mut l.description, "description"),
            ] {
                if let Some(v) = v {
                    *field = v;
                    mask.push(path);
                }
            }
            if mask.is_empty() {
                return Err(UsageError(
                    "nothing to update: give at least one field flag (see `switchyard limits update --help`)"
                        .into(),
                )
                .into());
            }
            let l = admin
                .client
                .update_limit(pb::UpdateLimitRequest {
                    limit: Some(l),
                    update_mask: mask.iter().map(|s| s.to_string()).collect(),
                })
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            ctx.show(&definition(&l), || limit_text("updated", &l))
        }
        LimitsCmd::Delete { name } => {
            let r = admin
                .client
                .delete_limit(pb::DeleteLimitRequest { name: name.clone() })
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            crate::commands::deleted(ctx, "limit", name, r.version)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_exact() {
        assert_eq!(parse_money("25"), Some(25_000_000_000));
        assert_eq!(parse_money("0.50"), Some(500_000_000));
        assert_eq!(parse_money(".000000001"), Some(1));
        assert_eq!(parse_money("1.0000000001"), None);
        assert_eq!(parse_money("-1"), None);
        assert_eq!(parse_money("1e3"), None);
        assert_eq!(parse_money(""), None);
        assert_eq!(fmt_amount("spend", 25_000_000_000), "25.000000");
        assert_eq!(fmt_amount("requests", 100), "100");
        assert!(amount("requests", "1.5").is_err());
        assert_eq!(amount("spend", "1.5").unwrap(), 1_500_000_000);
    }
}
