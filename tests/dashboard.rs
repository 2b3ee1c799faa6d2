//! docs/grafana-dashboard.json queries only metrics the controller exports:
//! every metric name in its PromQL (panels and template variables) must be
//! a sample name of the controller's registry (`Metrics::encode`, with every
//! family touched so that it has samples), and it covers the workqueue,
//! reconcile, RPC and reflector families.

use std::collections::BTreeSet;
use std::time::Duration;

use bitcoin_controller::metrics::{Metrics, ReconcileResult};
use bitcoin_controller::workqueue::{ItemExponentialFailureRateLimiter, WorkQueue};
use serde_json::Value;

const DASHBOARD: &str = include_str!("../docs/grafana-dashboard.json");

/// PromQL words that are not metric names (aggregation operators may be
/// followed by `by (..)` before their parenthesis).
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// Every PromQL expression of the dashboard: the panels' targets and the
/// template variables' queries.
fn expressions(dashboard: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, v) in o {
                    match (k.as_str(), v) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        ("query", Value::String(s)) if s.contains('(') => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    walk(&dashboard["templating"], &mut out);
    out
}

/// The metric names an expression selects: identifiers outside label
/// matchers `{..}`, range selectors `[..]`, strings and grouping clauses
/// `by (..)`, that are not function calls, keywords or numbers. The
/// label name of Grafana's `label_values(metric, label)` is dropped too.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let (mut i, mut depth_brace, mut depth_bracket) = (0, 0, 0);
    // The identifier before the innermost open parenthesis, per level.
    let mut paren_owner: Vec<String> = Vec::new();
    let mut arg_index: Vec<usize> = Vec::new();
    let mut last_word = String::new();
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                last_word.clear();
            }
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            '(' if depth_brace == 0 => {
                paren_owner.push(std::mem::take(&mut last_word));
                arg_index.push(0);
            }
            ')' if depth_brace == 0 => {
                paren_owner.pop();
                arg_index.pop();
            }
            ',' if depth_brace == 0 => {
                if let Some(n) = arg_index.last_mut() {
                    *n += 1;
                }
            }
            c if (c.is_ascii_alphabetic() || c == '_' || c == ':')
                && depth_brace == 0
                && depth_bracket == 0 =>
            {
                let start = i;
                while i + 1 < chars.len()
                    && (chars[i + 1].is_ascii_alphanumeric()
                        || chars[i + 1] == '_'
                        || chars[i + 1] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..=i].iter().collect();
                let mut next = i + 1;
                while next < chars.len() && chars[next] == ' ' {
                    next += 1;
                }
                let is_call = chars.get(next) == Some(&'(');
                let owner = paren_owner.last().map(String::as_str).unwrap_or("");
                let in_grouping = matches!(
                    owner,
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                );
                let label_values_label =
                    owner == "label_values" && arg_index.last().copied().unwrap_or(0) > 0;
                let is_number = (start > 0
                    && (chars[start - 1].is_ascii_digit() || chars[start - 1] == '.'))
                    || word.eq_ignore_ascii_case("e");
                if !is_call
                    && !in_grouping
                    && !label_values_label
                    && !is_number
                    && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                {
                    names.insert(word.clone());
                }
                last_word = word;
                i += 1;
                continue;
            }
            _ => {}
        }
        if !c.is_whitespace() && c != '(' {
            last_word.clear();
        }
        i += 1;
    }
    names
}

/// The sample names an OpenMetrics text declares: those of its samples, and
/// those its `# TYPE` lines promise (a family without samples yet, e.g. no
/// reconcile error so far, still names its series).
fn sample_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            names.insert(line.split(['{', ' ']).next().unwrap().to_owned());
        }
    }
    names
}

/// Sample names the controller exports, every family touched once.
fn exported() -> BTreeSet<String> {
    let metrics = Metrics::new();
    let _queue: WorkQueue<u32> = WorkQueue::with_metrics(
        "networks",
        ItemExponentialFailureRateLimiter::new(Duration::from_millis(5), Duration::from_secs(1)),
        metrics.workqueue("networks"),
    );
    let reflector = metrics.reflector("pods");
    reflector.list();
    reflector.watch();
    reflector.relist();
    reflector.failure();
    reflector.watch_event();
    reflector.handler_panic();
    metrics.reconciled(ReconcileResult::Success, Duration::from_millis(30));
    metrics.reconciled(
        ReconcileResult::Error("NodeSyncFailed"),
        Duration::from_millis(10),
    );
    metrics
        .rpc()
        .observe("addnode", "success", Duration::from_millis(3));
    metrics.set_leader(true);
    sample_names(&metrics.encode())
}

/// Checks every metric the dashboard queries against `exported`; returns
/// the names queried.
fn check_dashboard_against(exported: &BTreeSet<String>, source: &str) -> BTreeSet<String> {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("valid JSON");
    let exprs = expressions(&dashboard);
    assert!(exprs.len() >= 20, "only {} queries found", exprs.len());
    let mut queried = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric in {expr:?}");
        for name in names {
            assert!(
                exported.contains(&name),
                "the dashboard queries {name}, which {source} does not export \
                 (in {expr:?}); exported: {exported:?}"
            );
            queried.insert(name);
        }
    }
    for family in [
        "workqueue_",
        "bitcoin_controller_reconcile_",
        "bitcoin_controller_rpc_",
        "bitcoin_controller_reflector_",
    ] {
        assert!(
            queried.iter().any(|n| n.starts_with(family)),
            "the dashboard has no {family}* panel"
        );
    }
    println!(
        "the dashboard queries {} metrics, all exported by {source}:",
        queried.len()
    );
    for name in &queried {
        println!("  {name}");
    }
    queried
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (method, le) (rate(bitcoin_controller_rpc_duration_seconds_bucket{job=~"$job",outcome!="x"}[5m])))"#
        ),
        BTreeSet::from(["bitcoin_controller_rpc_duration_seconds_bucket".to_owned()])
    );
    assert_eq!(
        metric_names("a_total / clamp_min(sum without (x) (b), 1e-9) > bool 0 or on(y) c"),
        BTreeSet::from(["a_total".to_owned(), "b".to_owned(), "c".to_owned()])
    );
    assert_eq!(
        metric_names("label_values(bitcoin_controller_leader, job)"),
        BTreeSet::from(["bitcoin_controller_leader".to_owned()])
    );
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    check_dashboard_against(&exported(), "the controller's registry");
}

/// The same against `/metrics` of a running controller: the file
/// `$BC_SCRAPED_METRICS` (scripts/install-test.sh scrapes the leader the
/// chart installed, after it reconciled networks).
/// Needs a scrape of a running controller: built with `--features install`,
/// run by scripts/install-test.sh.
#[cfg(feature = "install")]
#[test]
fn dashboard_queries_only_scraped_metrics() {
    let path = std::env::var("BC_SCRAPED_METRICS")
        .expect("BC_SCRAPED_METRICS names a file with a /metrics scrape");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        text.trim_end().ends_with("# EOF"),
        "{path} is not a complete scrape"
    );
    let scraped: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    let queried = check_dashboard_against(&sample_names(&text), &format!("the scrape {path}"));
    // Most of what the dashboard shows has samples after a few reconciles.
    let with_samples = queried.iter().filter(|n| scraped.contains(*n)).count();
    println!("{with_samples} of them with samples in the scrape");
    assert!(with_samples * 2 > queried.len());
}

#[test]
fn dashboard_panels_have_unique_ids_and_a_datasource() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are not unique");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        assert!(p["targets"].as_array().is_some_and(|t| !t.is_empty()));
    }
}
