//! The Grafana dashboard and the Prometheus alert rules of `deploy/` (issue 20) against a
//! live modelgate: every metric name they use exists in a real scrape, every label they
//! select or group by is one the metric carries, label values they match exactly exist, and
//! the dashboard shows every family modelgate exports. (`promtool check rules` / `test rules`
//! and the PromQL syntax of every panel run in scripts/monitoring-check.sh.)

mod common;
use common::observed::Observed;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Labels Prometheus adds to every scraped series (the target's), never in the text itself.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// Metrics that are not modelgate's: `up` is Prometheus's own per-target series.
const PROMETHEUS_METRICS: [&str; 1] = ["up"];

/// One exposition: sample name → the label sets of its samples.
type Scrape = BTreeMap<String, Vec<BTreeMap<String, String>>>;

fn parse_scrape(text: &str) -> (Scrape, BTreeSet<String>) {
    let mut samples: Scrape = BTreeMap::new();
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(rest.split(' ').next().expect("family").to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).expect("sample line");
        let name = &line[..name_end];
        let mut labels = BTreeMap::new();
        if line[name_end..].starts_with('{') {
            let body = &line[name_end + 1..line.rfind('}').expect("closing brace")];
            for (k, v) in matchers(body) {
                labels.insert(k, v.1);
            }
        }
        samples.entry(name.to_owned()).or_default().push(labels);
    }
    (samples, families)
}

/// `k="v",k2=~"v2"` → (label, (operator, value)); values unescaped for `\"` and `\\`.
fn matchers(body: &str) -> Vec<(String, (String, String))> {
    let mut out = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let op_at = rest.find(['=', '!']).expect("matcher operator");
        let label = rest[..op_at].trim().to_owned();
        let after = &rest[op_at..];
        let op_len = after.find('"').expect("quoted value");
        let op = after[..op_len].trim().to_owned();
        let mut value = String::new();
        let mut chars = after[op_len + 1..].char_indices();
        let end = loop {
            let (i, c) = chars.next().expect("closing quote");
            match c {
                '"' => break i,
                '\\' => value.push(chars.next().expect("escaped").1),
                c => value.push(c),
            }
        };
        out.push((label, (op, value)));
        rest = after[op_len + 1 + end + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    out
}

/// A metric selector found in a query: the name and its label matchers.
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<(String, (String, String))>,
}

/// What one PromQL query uses: selectors of metric names, and grouping label lists
/// (`by`, `without`, `on`, `ignoring`, `group_left`, `group_right`).
fn analyse(query: &str) -> (Vec<Selector>, Vec<String>) {
    let bytes = query.as_bytes();
    let mut selectors = Vec::new();
    let mut grouping = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' {
            // Skip string literals (label values, label_replace arguments...).
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        let ident_start = c.is_ascii_alphabetic() || c == b'_';
        let prev_ident = i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if !ident_start || prev_ident {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len()
            && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'_' | b':'))
        {
            i += 1;
        }
        let word = &query[start..i];
        let next = query[i..].trim_start();
        let is_grouping = matches!(
            word,
            "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
        );
        if is_grouping && next.starts_with('(') {
            let open = i + query[i..].find('(').expect("paren");
            let close = open + query[open..].find(')').expect("closing paren");
            grouping.extend(
                query[open + 1..close]
                    .split(',')
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            );
            i = close + 1;
            continue;
        }
        let is_metric = word.starts_with("modelgate_") || PROMETHEUS_METRICS.contains(&word);
        if is_metric && !next.starts_with('(') {
            let mut m = Vec::new();
            if next.starts_with('{') {
                let open = i + query[i..].find('{').expect("brace");
                let close = open + query[open..].find('}').expect("closing brace");
                m = matchers(&query[open + 1..close]);
                i = close + 1;
            }
            selectors.push(Selector {
                name: word.to_owned(),
                matchers: m,
            });
        }
    }
    (selectors, grouping)
}

/// Every query of the dashboard (panel targets and variable queries), with where it is.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(panels: &[serde_json::Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            if let Some(children) = p["panels"].as_array() {
                walk(children, out);
            }
            let title = p["title"].as_str().unwrap_or("?");
            if p["type"] != "row" {
                let targets = p["targets"].as_array().map_or(&[][..], Vec::as_slice);
                assert!(!targets.is_empty(), "panel {title:?} has no query");
                assert_eq!(
                    p["datasource"]["uid"], "${datasource}",
                    "panel {title:?} uses the data source variable"
                );
            }
            for t in p["targets"].as_array().map_or(&[][..], Vec::as_slice) {
                let expr = t["expr"].as_str().expect("expr");
                out.push((format!("panel {title:?}"), expr.to_owned()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().expect("panels"), &mut out);
    for v in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().expect("variable query");
            out.push((format!("variable {}", v["name"]), q.to_owned()));
        }
    }
    out
}

/// Every `expr:` of a rules file (inline, or a `|`/`>` block below it).
fn rule_queries(yaml: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut alert = String::from("?");
    for (n, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            alert = name.trim().to_owned();
        }
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        let indent = line.len() - trimmed.len();
        let expr = if value.starts_with('|') || value.starts_with('>') {
            lines[n + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            value.to_owned()
        };
        out.push((format!("alert {alert}"), expr));
    }
    out
}

/// The problems of `queries` against the scrape (empty: all good).
fn problems(queries: &[(String, String)], scrape: &Scrape) -> Vec<String> {
    let mut found = Vec::new();
    for (place, query) in queries {
        let (selectors, grouping) = analyse(query);
        assert!(
            !selectors.is_empty(),
            "{place}: no metric found in {query:?} (parser out of step?)"
        );
        let mut labels_in_query: BTreeSet<&str> = TARGET_LABELS.into_iter().collect();
        for s in &selectors {
            if PROMETHEUS_METRICS.contains(&s.name.as_str()) {
                labels_in_query.insert("job");
                continue;
            }
            let Some(samples) = scrape.get(&s.name) else {
                found.push(format!("{place}: {} is not in the scrape", s.name));
                continue;
            };
            labels_in_query.extend(samples.iter().flat_map(|l| l.keys().map(String::as_str)));
            for (label, (op, value)) in &s.matchers {
                if TARGET_LABELS.contains(&label.as_str()) {
                    continue;
                }
                if !samples.iter().any(|l| l.contains_key(label)) {
                    found.push(format!("{place}: {} has no label {label}", s.name));
                } else if op == "="
                    && !value.contains('$')
                    && !samples.iter().any(|l| l.get(label) == Some(value))
                {
                    found.push(format!("{place}: no {}{{{label}=\"{value}\"}}", s.name));
                }
            }
        }
        for label in &grouping {
            if !labels_in_query.contains(label.as_str()) {
                found.push(format!(
                    "{place}: groups by {label}, which none of its metrics carries"
                ));
            }
        }
    }
    found
}

fn repo_file(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn the_query_reader_finds_names_labels_and_grouping() {
    let (s, g) = analyse(
        r#"sum by (model, le) (rate(modelgate_x_bucket{model=~"$model",code="5.."}[5m])) / on (job) up == 0"#,
    );
    let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["modelgate_x_bucket", "up"]);
    assert_eq!(
        s[0].matchers[1],
        ("code".into(), ("=".into(), "5..".into()))
    );
    assert_eq!(g, ["model", "le", "job"]);
    let mut scrape = Scrape::new();
    scrape.insert(
        "modelgate_x_bucket".into(),
        vec![[
            ("model".to_owned(), "m".to_owned()),
            ("le".into(), "1".into()),
        ]
        .into()],
    );
    let p = problems(
        &[(
            "q".into(),
            r#"sum by (kind) (modelgate_x_bucket{code="1"}) + modelgate_y"#.into(),
        )],
        &scrape,
    );
    assert_eq!(
        p,
        [
            "q: modelgate_x_bucket has no label code",
            "q: modelgate_y is not in the scrape",
            "q: groups by kind, which none of its metrics carries",
        ]
    );
    let rules = rule_queries("  - alert: A\n    expr: |\n      up\n        == 0\n    for: 1m\n  - alert: B\n    expr: modelgate_z > 1\n");
    assert_eq!(
        rules,
        [
            ("alert A".to_owned(), "up == 0".to_owned()),
            ("alert B".to_owned(), "modelgate_z > 1".to_owned())
        ]
    );
}

#[test]
fn every_metric_of_the_dashboard_and_the_alert_rules_is_in_a_live_scrape() {
    let observed = Observed::start(true);
    let text = observed.metrics();
    let (scrape, families) = parse_scrape(&text);

    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("deploy/grafana/modelgate-dashboard.json"))
            .expect("the dashboard is JSON");
    let panel_queries = dashboard_queries(&dashboard);
    let alert_queries = rule_queries(&repo_file("deploy/prometheus/modelgate-alerts.yaml"));
    assert!(panel_queries.len() > 30, "{}", panel_queries.len());
    let alerts: Vec<&str> = alert_queries.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        alerts,
        [
            "alert ModelgateInstanceDown",
            "alert ModelgateModelWithoutHealthyReplica",
            "alert ModelgateHighErrorRate",
            "alert ModelgateTimeToFirstByteRegressed",
            "alert ModelgateBufferBudgetNearlyExhausted",
            "alert ModelgateSharedLimitsLocal",
        ]
    );

    let mut all = panel_queries.clone();
    all.extend(alert_queries);
    let found = problems(&all, &scrape);
    assert!(
        found.is_empty(),
        "the dashboard or the rules use series a live modelgate does not export:\n{}\n--- scrape ---\n{text}",
        found.join("\n")
    );

    // Every family modelgate exports has a place on the dashboard.
    let used: BTreeSet<String> = panel_queries
        .iter()
        .flat_map(|(_, q)| analyse(q).0)
        .map(|s| s.name)
        .collect();
    let missing: Vec<&String> = families
        .iter()
        .filter(|f| {
            !used.iter().any(|u| {
                u.strip_prefix(f.as_str())
                    .is_some_and(|rest| ["", "_bucket", "_sum", "_count"].contains(&rest))
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "metric families with no dashboard panel: {missing:?} (add a panel to deploy/grafana/modelgate-dashboard.json)"
    );
}
