//! Prices as people write them (units of the currency per million tokens, `2.5` or
//! `"2.50"`) and as the control plane stores them (integer nano-units per token), the
//! default price table that ships with the CLI, and the cost columns of `usage` and
//! `spend`.
//!
//! The two units are the same number up to a factor: one nano-unit per token is 0.001 of
//! a unit per million tokens. So a price is exact to 0.001 per million tokens, and a cost
//! (tokens × nano-units per token) is an exact integer: no rounding anywhere.
use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use switchyard_proto as pb;

/// A price in a TOML document (`price = { input = 2.5, output = 10 }`): units of the
/// currency per million tokens, as a number or a decimal string, at most 3 decimals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePrice {
    pub input: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<toml::Value>,
    pub output: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<toml::Value>,
}

/// `"2.50"` (units per million tokens) → 2500 (nano-units per token). `None` when it is
/// not a plain non-negative decimal with at most 3 decimals, or is too large.
pub fn parse_decimal(s: &str) -> Option<u64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let digits = |d: &str| d.bytes().all(|c| c.is_ascii_digit());
    let frac = frac.trim_end_matches('0');
    if !digits(int) || !digits(frac) || frac.len() > 3 || int.len() > 12 {
        return None;
    }
    let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac: u64 = format!("{frac:0<3}").parse().ok()?;
    int.checked_mul(1000)?.checked_add(frac)
}

/// One class's price at `at` (`models.gpt-4o.price.input`).
fn amount(at: &str, v: &toml::Value) -> Result<u64> {
    let text = match v {
        toml::Value::Integer(i) if *i >= 0 => i.to_string(),
        // The shortest text that reads back as this float: what the file says.
        toml::Value::Float(f) if f.is_finite() && *f >= 0.0 => format!("{f}"),
        toml::Value::String(s) => s.clone(),
        other => {
            bail!("{at}: expected a non-negative number of currency units per million tokens, got {other}")
        }
    };
    parse_decimal(&text).ok_or_else(|| {
        anyhow!("{at}: `{text}` is not a price per million tokens with at most 3 decimals (e.g. 2.5 or \"0.075\")")
    })
}

/// Nano-units per token → units per million tokens, as short as exact (`2.5`, `0.075`, `10`).
pub fn fmt_price(nano: u64) -> String {
    let (int, frac) = (nano / 1000, nano % 1000);
    if frac == 0 {
        int.to_string()
    } else {
        format!("{int}.{}", format!("{frac:03}").trim_end_matches('0'))
    }
}

/// The TOML value `export` writes for a price: an integer or a float that reads back exactly.
fn value(nano: u64) -> toml::Value {
    if nano.is_multiple_of(1000) {
        toml::Value::Integer(i64::try_from(nano / 1000).unwrap_or(i64::MAX))
    } else {
        // `fmt_price` is exact and short; its float reads back as the same decimal.
        toml::Value::Float(fmt_price(nano).parse().unwrap_or(0.0))
    }
}

impl FilePrice {
    /// Validate into the proto form; `at` names the price (`models.gpt-4o.price`).
    pub fn to_proto(&self, at: &str) -> Result<pb::Price> {
        let class = |name: &str, v: &Option<toml::Value>| {
            v.as_ref().map(|v| amount(&format!("{at}.{name}"), v)).transpose()
        };
        let p = pb::Price {
            input: class("input", &self.input)?,
            cached_input: class("cached_input", &self.cached_input)?,
            cache_write: class("cache_write", &self.cache_write)?,
            output: class("output", &self.output)?,
            reasoning: class("reasoning", &self.reasoning)?,
        };
        if p.input.is_none() {
            bail!("{at}.input is required");
        }
        if p.output.is_none() {
            bail!("{at}.output is required");
        }
        Ok(p)
    }

    pub fn from_proto(p: &pb::Price) -> FilePrice {
        FilePrice {
            input: p.input.map(value),
            cached_input: p.cached_input.map(value),
            cache_write: p.cache_write.map(value),
            output: p.output.map(value),
            reasoning: p.reasoning.map(value),
        }
    }
}

/// The default table, as shipped (`ctl/data/prices.toml`).
pub const DEFAULT_PRICES: &str = include_str!("../data/prices.toml");

/// The default table, keyed by upstream model name.
pub fn default_table() -> Result<BTreeMap<String, pb::Price>> {
    let raw: BTreeMap<String, FilePrice> =
        toml::from_str(DEFAULT_PRICES).map_err(|e| anyhow!("default price table: {e}"))?;
    raw.iter()
        .map(|(model, p)| Ok((model.clone(), p.to_proto(&format!("prices.{model}"))?)))
        .collect()
}

/// `model` without a trailing `-latest`, `-YYYYMMDD` or `-YYYY-MM-DD`, if it has one.
fn undated(model: &str) -> Option<&str> {
    if let Some(m) = model.strip_suffix("-latest") {
        return Some(m);
    }
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if let Some((m, d)) = model.rsplit_once('-') {
        if d.len() == 8 && all_digits(d) {
            return Some(m);
        }
    }
    // `-YYYY-MM-DD`: three dash-separated number groups of 4, 2 and 2 digits.
    let mut parts = model.rsplitn(4, '-');
    let (dd, mm, yyyy, rest) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (dd.len() == 2
        && mm.len() == 2
        && yyyy.len() == 4
        && all_digits(dd)
        && all_digits(mm)
        && all_digits(yyyy))
    .then_some(rest)
}

/// The table's price of `upstream_model`: its own entry, else its undated one.
pub fn lookup<'t>(table: &'t BTreeMap<String, pb::Price>, upstream_model: &str) -> Option<&'t pb::Price> {
    table
        .get(upstream_model)
        .or_else(|| table.get(undated(upstream_model)?))
}

/// Give every backend that has no price, and whose model has none, the table's price of
/// its upstream model. Returns the `model/backend`s priced, and those left unpriced.
pub fn fill_defaults(
    doc: &mut pb::ConfigDocument,
    table: &BTreeMap<String, pb::Price>,
) -> (Vec<String>, Vec<String>) {
    let (mut priced, mut unpriced) = (Vec::new(), Vec::new());
    for m in &mut doc.models {
        if m.price.is_some() {
            continue;
        }
        for b in &mut m.backends {
            if b.price.is_some() {
                continue;
            }
            let name = format!("{}/{}", m.name, b.name);
            match lookup(table, &b.upstream_model) {
                Some(p) => {
                    b.price = Some(*p);
                    priced.push(name);
                }
                None => unpriced.push(name),
            }
        }
    }
    (priced, unpriced)
}

/// A cost in nano-units, shown in units with 6 decimals (`0.012345`); exact in JSON.
pub fn fmt_cost(nano: u64) -> String {
    format!("{}.{:06}", nano / 1_000_000_000, (nano % 1_000_000_000) / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact_and_bounded() {
        assert_eq!(parse_decimal("2.50"), Some(2500));
        assert_eq!(parse_decimal("0.075"), Some(75));
        assert_eq!(parse_decimal("10"), Some(10_000));
        assert_eq!(parse_decimal(".5"), Some(500));
        assert_eq!(parse_decimal("0.0750"), Some(75));
        assert_eq!(parse_decimal("0.0001"), None);
        assert_eq!(parse_decimal("-1"), None);
        assert_eq!(parse_decimal("1e3"), None);
        assert_eq!(parse_decimal(""), None);
        assert_eq!(parse_decimal("."), None);
        for n in [0, 1, 5, 75, 125, 2500, 10_000, 18_750, 1_000_000_123] {
            assert_eq!(parse_decimal(&fmt_price(n)), Some(n), "{n}");
            assert_eq!(amount("x", &value(n)).unwrap(), n, "{n}");
        }
    }

    #[test]
    fn price_errors_name_the_path() {
        let p: FilePrice = toml::from_str("input = 0.0001\noutput = 1").unwrap();
        let e = p.to_proto("models.m.price").unwrap_err().to_string();
        assert!(e.starts_with("models.m.price.input: `0.0001`"), "{e}");
        let p: FilePrice = toml::from_str("input = 1").unwrap();
        let e = p.to_proto("models.m.backends[0].price").unwrap_err().to_string();
        assert_eq!(e, "models.m.backends[0].price.output is required");
        let p: FilePrice = toml::from_str("input = -1\noutput = 1").unwrap();
        assert!(p
            .to_proto("p")
            .unwrap_err()
            .to_string()
            .starts_with("p.input: expected"));
        assert!(toml::from_str::<FilePrice>("input = 1\noutput = 1\ncache_read = 1").is_err());
    }

    #[test]
    fn default_table_loads_and_dated_ids_fall_back() {
        let t = default_table().unwrap();
        let p = lookup(&t, "claude-sonnet-4-5-20250929").unwrap();
        assert_eq!(
            (p.input, p.cached_input, p.cache_write, p.output),
            (Some(3000), Some(300), Some(3750), Some(15_000))
        );
        assert_eq!(lookup(&t, "gpt-4o-2024-08-06").unwrap().input, Some(2500));
        assert_eq!(lookup(&t, "gpt-4o-2024-05-13").unwrap().input, Some(5000));
        assert_eq!(lookup(&t, "claude-3-5-haiku-latest").unwrap().output, Some(4000));
        assert_eq!(lookup(&t, "gpt-4o-mini").unwrap().cached_input, Some(75));
        assert!(lookup(&t, "my-local-llama").is_none());
    }

    #[test]
    fn fill_defaults_respects_explicit_prices() {
        let own = pb::Price {
            input: Some(1),
            output: Some(2),
            ..Default::default()
        };
        let backend = |name: &str, upstream: &str, price: Option<pb::Price>| pb::Backend {
            name: name.into(),
            upstream_model: upstream.into(),
            price,
            ..Default::default()
        };
        let mut doc = pb::ConfigDocument {
            models: vec![
                pb::Model {
                    name: "a".into(),
                    backends: vec![
                        backend("x", "gpt-4o", None),
                        backend("y", "gpt-4o", Some(own)),
                        backend("z", "local", None),
                    ],
                    ..Default::default()
                },
                pb::Model {
                    name: "b".into(),
                    price: Some(own),
                    backends: vec![backend("x", "gpt-4o", None)],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let (priced, unpriced) = fill_defaults(&mut doc, &default_table().unwrap());
        assert_eq!(
            (priced, unpriced),
            (vec!["a/x".to_string()], vec!["a/z".to_string()])
        );
        assert_eq!(doc.models[0].backends[0].price.and_then(|p| p.input), Some(2500));
        assert_eq!(doc.models[0].backends[1].price, Some(own));
        assert_eq!(doc.models[1].backends[0].price, None);
    }

    #[test]
    fn costs_show_six_decimals() {
        assert_eq!(fmt_cost(0), "0.000000");
        assert_eq!(fmt_cost(1_234_567_890), "1.234567");
        assert_eq!(fmt_cost(999), "0.000000");
    }
}
