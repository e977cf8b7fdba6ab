//! What Grafana does to a dashboard's queries before a data source sees them,
//! so that tests can run the queries of `dashboards/*.json` against real
//! servers exactly as a Grafana would send them: template variables,
//! `$timeFilter`, `$__interval`, `$__rate_interval`, `$__range`, the query
//! step, and the time range.
//!
//! Taken from Grafana's source (github.com/grafana/grafana), file by file:
//! - `packages/grafana-data/src/datetime/rangeutil.ts`: `calculateInterval`
//!   (interval = `roundInterval(range / maxDataPoints)`, at least the
//!   data source's "min interval", `jsonData.timeInterval`) and the
//!   `roundInterval` table.
//! - `public/app/plugins/datasource/influxdb/datasource.ts`
//!   (`applyVariables`): the raw InfluxQL query goes through
//!   `templateSrv.replace(query, vars, 'regex')` without `__interval`, which
//!   the backend fills in.
//! - the `regex` format (`scenes` `formatRegistry`): a value is regex-escaped
//!   with `escapeRegex` (`packages/grafana-data/src/text/string.ts`,
//!   characters `\^$*+?.()|[]{}/`), several values become `(a|b)`, one value
//!   stays bare.
//! - `pkg/tsdb/influxdb/models/query.go` (`Build`): `$timeFilter` becomes
//!   `time >= <from>ms and time <= <to>ms`; `$interval` and `$__interval`
//!   `gtime.FormatInterval(interval)`; `$__interval_ms` the milliseconds.
//! - `public/app/plugins/datasource/prometheus/datasource.ts`
//!   (`interpolateQueryExpr`): a multi-value or include-all variable is
//!   escaped with `prometheusSpecialRegexEscape` (backslashes doubled, as the
//!   value sits in a PromQL string) and several values become `(a|b)`.
//! - `pkg/promlib/models/query.go` (`calculatePrometheusInterval`,
//!   `calculateRateInterval`, `interpolateVariables`, `AlignTimeRange`): the
//!   step is the interval, at least range/11000 rounded;
//!   `$__rate_interval` = max(interval + scrape interval, 4 × scrape
//!   interval) written as Go's `Duration.String()`; `$__range` the range in
//!   whole seconds plus `s`; start and end are floored to a multiple of the
//!   step.
//!
//! Not modelled (no dashboard here uses them): ad hoc filters, `$__from` /
//! `$__to`, per-query "min interval" or "interval factor", the
//! `${var:format}` syntax, relative-time `$timeFilter` (`now() - 1h`, sent
//! only by Grafana's old browser-side query path). A query that still holds
//! a `$` token after expansion is an error, so a macro nobody models cannot
//! pass silently.

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// A dashboard time range, in Unix milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct TimeRange {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl TimeRange {
    pub fn span_ms(&self) -> i64 {
        (self.to_ms - self.from_ms).max(0)
    }
}

/// Grafana's `roundInterval` (rangeutil.ts): the auto interval snapped to a
/// "nice" value, in milliseconds.
pub fn round_interval(interval_ms: f64) -> i64 {
    const TABLE: &[(f64, i64)] = &[
        (10.0, 1),
        (15.0, 10),
        (35.0, 20),
        (75.0, 50),
        (150.0, 100),
        (350.0, 200),
        (750.0, 500),
        (1_500.0, 1_000),
        (3_500.0, 2_000),
        (7_500.0, 5_000),
        (12_500.0, 10_000),
        (17_500.0, 15_000),
        (25_000.0, 20_000),
        (45_000.0, 30_000),
        (90_000.0, 60_000),
        (210_000.0, 120_000),
        (450_000.0, 300_000),
        (750_000.0, 600_000),
        (1_050_000.0, 900_000),
        (1_500_000.0, 1_200_000),
        (2_700_000.0, 1_800_000),
        (5_400_000.0, 3_600_000),
        (9_000_000.0, 7_200_000),
        (16_200_000.0, 10_800_000),
        (32_400_000.0, 21_600_000),
        (86_400_000.0, 43_200_000),
        (604_800_000.0, 86_400_000),
        (1_814_400_000.0, 604_800_000),
        (3_628_800_000.0, 2_592_000_000),
    ];
    TABLE
        .iter()
        .find(|(below, _)| interval_ms < *below)
        .map_or(31_536_000_000, |(_, rounded)| *rounded)
}

/// `gtime.FormatInterval` (grafana-plugin-sdk-go): the largest whole unit.
pub fn format_interval(ms: i64) -> String {
    const UNITS: &[(i64, &str)] = &[
        (31_536_000_000, "y"),
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
        (1, "ms"),
    ];
    for (size, unit) in UNITS {
        if ms >= *size {
            return format!("{}{unit}", ms / size);
        }
    }
    "1ms".to_string()
}

/// Go's `time.Duration.String()` for whole milliseconds (`1m0s`, `1m15s`,
/// `500ms`), which Grafana writes for `$__rate_interval`.
pub fn go_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1_000, rest % 1_000);
    let seconds = if frac == 0 {
        format!("{s}s")
    } else {
        let digits = format!("{frac:03}");
        format!("{s}.{}s", digits.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

/// Parses Grafana's interval strings (`15s`, `1m`, `500ms`, `2h`).
pub fn parse_interval(text: &str) -> Result<i64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: i64 = number
        .parse()
        .with_context(|| format!("interval {text:?}"))?;
    let scale = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 604_800_000,
        "y" => 31_536_000_000,
        _ => bail!("interval {text:?}: unknown unit"),
    };
    Ok(n * scale)
}

/// The panel's auto interval (`$__interval`), as `calculateInterval` makes
/// it. Grafana passes the panel's width in pixels as `maxDataPoints` unless
/// the panel sets one: taken here as its share of a 1920-px-wide screen.
pub fn panel_interval_ms(panel: &Value, range: TimeRange, min_interval_ms: i64) -> i64 {
    let width_cols = panel["gridPos"]["w"].as_f64().unwrap_or(24.0);
    let max_data_points = panel["maxDataPoints"]
        .as_f64()
        .unwrap_or((width_cols / 24.0 * 1920.0).floor())
        .max(1.0);
    let auto = round_interval(range.span_ms() as f64 / max_data_points);
    let min = panel["interval"]
        .as_str()
        .and_then(|i| parse_interval(i).ok())
        .unwrap_or(min_interval_ms)
        .max(1);
    auto.max(min)
}

/// `escapeRegex` of @grafana/data, used by the `regex` format (InfluxDB).
pub fn escape_regex(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if "\\^$*+?.()|[]{}/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `prometheusSpecialRegexEscape`: as [`escape_regex`] without `/`, with
/// the backslash doubled because the value lands inside a PromQL string.
pub fn prometheus_regex_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if "\\^$*+?.()|[]{}".contains(c) {
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out
}

/// A multi-value (or include-all) variable's selected values in regex form:
/// one value bare, several as `(a|b)`.
pub fn regex_values(values: &[String], escape: fn(&str) -> String) -> String {
    let escaped: Vec<String> = values.iter().map(|v| escape(v)).collect();
    match escaped.as_slice() {
        [one] => one.clone(),
        many => format!("({})", many.join("|")),
    }
}

/// Replaces `$name` and `${name}` where `lookup` knows `name` (as Grafana's
/// template service does: unknown names stay as they are).
pub fn replace_variables(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) if braced[..end].chars().all(word) => (&braced[..end], end + 2),
                _ => ("", 0),
            }
        } else {
            let end = after.find(|c: char| !word(c)).unwrap_or(after.len());
            (&after[..end], end)
        };
        match (name.is_empty(), lookup(name)) {
            (false, Some(value)) => {
                out.push_str(&value);
                rest = &after[consumed..];
            }
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Fails if `query` still holds a `$word` token: a macro or variable that
/// Grafana would have replaced and this module does not know.
pub fn ensure_expanded(query: &str) -> Result<()> {
    let bytes = query.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        let next = bytes.get(i + 1).copied().unwrap_or(b' ');
        // `$` before `/` or `)` ends a regex (`/^pump-1$/`), not a variable.
        if *b == b'$' && (next.is_ascii_alphabetic() || next == b'_' || next == b'{') {
            bail!("unexpanded {:?} in {query:?}", &query[i..]);
        }
    }
    Ok(())
}

/// The values of the dashboard's variables, by name, as selected.
pub type Selection<'a> = &'a [(String, Vec<String>)];

/// An InfluxQL panel query as Grafana's InfluxDB data source sends it.
pub fn expand_influxql(
    query: &str,
    range: TimeRange,
    interval_ms: i64,
    vars: Selection<'_>,
) -> Result<String> {
    // Frontend: the dashboard's variables in the regex format.
    let frontend = replace_variables(query, &|name| {
        vars.iter()
            .find(|(n, _)| n == name)
            .map(|(_, values)| regex_values(values, escape_regex))
    });
    // Backend (query.go `Build`), in its order.
    let out = frontend
        .replace(
            "$timeFilter",
            &format!("time >= {}ms and time <= {}ms", range.from_ms, range.to_ms),
        )
        .replace("$interval", &format_interval(interval_ms))
        .replace("$__interval_ms", &interval_ms.to_string())
        .replace("$__interval", &format_interval(interval_ms));
    ensure_expanded(&out)?;
    Ok(out)
}

/// A PromQL panel query as Grafana's Prometheus data source sends it.
#[derive(Debug, Clone)]
pub struct PromRequest {
    pub expr: String,
    pub start_s: i64,
    pub end_s: i64,
    pub step_ms: i64,
}

pub fn expand_promql(
    expr: &str,
    range: TimeRange,
    interval_ms: i64,
    scrape_interval_ms: i64,
    vars: Selection<'_>,
) -> Result<PromRequest> {
    let frontend = replace_variables(expr, &|name| {
        vars.iter()
            .find(|(n, _)| n == name)
            .map(|(_, values)| regex_values(values, prometheus_regex_escape))
    });
    let safe = {
        let per_point = range.span_ms() as f64 / 11_000.0;
        if per_point > 1.0 {
            round_interval(per_point)
        } else {
            1
        }
    };
    let step_ms = interval_ms.max(safe);
    let rate_ms = (interval_ms + scrape_interval_ms).max(4 * scrape_interval_ms);
    let range_ms = range.span_ms();
    let range_s = (range_ms as f64 / 1000.0).round() as i64;
    let out = frontend
        .replace("$__interval_ms", &step_ms.to_string())
        .replace("$__interval", &format_interval(step_ms))
        .replace("$__range_ms", &range_ms.to_string())
        .replace("$__range_s", &range_s.to_string())
        .replace("$__range", &format!("{range_s}s"))
        .replace("$__rate_interval_ms", &rate_ms.to_string())
        .replace("$__rate_interval", &go_duration(rate_ms));
    ensure_expanded(&out)?;
    let align = |ms: i64| ms.div_euclid(step_ms) * step_ms;
    Ok(PromRequest {
        expr: out,
        start_s: align(range.from_ms) / 1000,
        end_s: align(range.to_ms) / 1000,
        step_ms,
    })
}

/// `jsonData.timeInterval` of the data source `uid` in a Grafana
/// provisioning file (the repository's, read as text: the test harness has
/// no YAML parser, and the file is small and ours).
pub fn provisioned_time_interval(provisioning_yaml: &str, uid: &str) -> Result<Option<String>> {
    let mut in_source = false;
    let mut found = false;
    for line in provisioning_yaml.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("- ") {
            in_source = false;
        }
        if let Some(value) = trimmed
            .trim_start_matches("- ")
            .strip_prefix("uid:")
            .map(str::trim)
        {
            in_source = value.trim_matches('"') == uid;
            found |= in_source;
        }
        if in_source {
            if let Some(value) = trimmed.strip_prefix("timeInterval:") {
                return Ok(Some(value.trim().trim_matches('"').to_string()));
            }
        }
    }
    anyhow::ensure!(found, "no data source with uid {uid} in the provisioning");
    Ok(None)
}
