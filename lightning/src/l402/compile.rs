//! `l402 compile`: paywall intents → the Aperture-style route config, deterministically. The
//! original lightning-ops rules: only fixed pricing with a positive price, non-empty patterns,
//! http/https upstreams matching the route's protocol, hosts lowercased, paths with a leading `/`;
//! routes ordered by priority, then host and path specificity (exact > prefix `/*` > regex >
//! catch-all); duplicate, ambiguous and shadowed routes fail the compile. The same input always
//! gives byte-identical YAML and the same `configHash` (`cfg_` + hex SHA-256 of the YAML).

use std::collections::BTreeSet;

use aggregates::canonical::canonical_json;
use aggregates::payment::types::sha256_hex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A paywall as the control plane (or a file) describes it. Unknown fields are ignored: the
/// control plane sends more than the compiler needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Paywall {
    pub paywall_id: String,
    pub owner_id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// `active` paywalls are compiled; `paused` and `archived` ones are not.
    #[serde(default = "active")]
    pub status: String,
    pub policy: PaywallPolicy,
    #[serde(default)]
    pub routes: Vec<PaywallRoute>,
}

fn active() -> String {
    "active".to_owned()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaywallPolicy {
    pub pricing_mode: String,
    #[serde(default)]
    pub fixed_amount_msats: i64,
    /// An owner's kill switch disables the paywall.
    #[serde(default)]
    pub kill_switch: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaywallRoute {
    pub route_id: String,
    pub host_pattern: String,
    pub path_pattern: String,
    pub upstream_url: String,
    pub protocol: String,
    #[serde(default)]
    pub timeout_ms: i64,
    #[serde(default)]
    pub priority: i64,
}

impl Paywall {
    /// Whether the paywall takes part in the compile (active and not killed).
    pub fn enabled(&self) -> bool {
        self.status == "active" && !self.policy.kill_switch
    }
}

/// A compile diagnostic; every one of them fails the compile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Diagnostic {
    pub code: String,
    pub severity: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paywall_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub related_route_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

fn diag(
    code: &str,
    message: impl Into<String>,
    paywall_id: Option<&str>,
    route_id: Option<&str>,
    details: Option<Value>,
) -> Diagnostic {
    Diagnostic {
        code: code.to_owned(),
        severity: "error".to_owned(),
        message: message.into(),
        paywall_id: paywall_id.map(str::to_owned),
        route_id: route_id.map(str::to_owned),
        related_route_id: None,
        details,
    }
}

/// How a path pattern matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    Exact,
    Prefix,
    Regex,
    Catchall,
}

/// A compiled route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledRule {
    pub id: String,
    pub paywall_id: String,
    pub owner_id: String,
    pub route_id: String,
    pub host_pattern: String,
    pub path_pattern: String,
    pub upstream_url: String,
    pub protocol: String,
    pub timeout_ms: i64,
    pub priority: i64,
    pub amount_msats: i64,
    pub path_kind: PathKind,
}

/// The compile's result.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledArtifact {
    /// `cfg_` + SHA-256 of the YAML when valid; of the canonical input snapshot when not.
    pub config_hash: String,
    /// Empty when invalid.
    pub aperture_yaml: String,
    pub rules: Vec<CompiledRule>,
    pub diagnostics: Vec<Diagnostic>,
    pub rule_count: usize,
    pub valid: bool,
}

pub fn normalize_host(input: &str) -> String {
    input.trim().to_lowercase()
}

pub fn normalize_path(input: &str) -> String {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        "/".to_owned()
    } else if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

pub fn classify_path(path: &str) -> PathKind {
    if path == "/" || path == "/*" {
        PathKind::Catchall
    } else if path.ends_with("/*")
        && !path[..path.len() - 2].contains([
            '*', '\\', '^', '$', '+', '?', '(', ')', '[', ']', '{', '}', '|',
        ])
    {
        PathKind::Prefix
    } else if path.contains([
        '\\', '^', '$', '+', '?', '(', ')', '[', ']', '{', '}', '|', '*',
    ]) {
        PathKind::Regex
    } else {
        PathKind::Exact
    }
}

fn host_specificity(host: &str) -> u8 {
    if host == "*" {
        0
    } else if host.contains('*') {
        1
    } else {
        2
    }
}

fn path_specificity(kind: PathKind) -> u8 {
    match kind {
        PathKind::Exact => 3,
        PathKind::Prefix => 2,
        PathKind::Regex => 1,
        PathKind::Catchall => 0,
    }
}

/// The regex a regex-kind path compiles to: a pattern with regex syntax is used as is (anchored);
/// one with only `*` globs matches any characters there.
pub fn path_regex(path: &str) -> Result<regex::Regex, regex::Error> {
    let has_regex_syntax =
        path.contains(['\\', '^', '$', '+', '?', '(', ')', '[', ']', '{', '}', '|']);
    let source = if has_regex_syntax {
        let inner = path.trim_start_matches('^').trim_end_matches('$');
        format!("^(?:{inner})$")
    } else {
        format!("^{}$", regex::escape(path).replace("\\*", ".*"))
    };
    regex::Regex::new(&source)
}

fn prefix_of(path: &str) -> &str {
    path.strip_suffix('*').unwrap_or(path)
}

fn overlaps(a: &CompiledRule, b: &CompiledRule) -> bool {
    if a.path_pattern == b.path_pattern
        || a.path_kind == PathKind::Catchall
        || b.path_kind == PathKind::Catchall
    {
        return true;
    }
    if a.path_kind == PathKind::Prefix && b.path_pattern.starts_with(prefix_of(&a.path_pattern)) {
        return true;
    }
    if b.path_kind == PathKind::Prefix && a.path_pattern.starts_with(prefix_of(&b.path_pattern)) {
        return true;
    }
    a.path_kind == PathKind::Regex || b.path_kind == PathKind::Regex
}

fn more_general(a: &CompiledRule, b: &CompiledRule) -> bool {
    let (ha, hb) = (
        host_specificity(&a.host_pattern),
        host_specificity(&b.host_pattern),
    );
    if ha != hb {
        return ha < hb;
    }
    let (pa, pb) = (path_specificity(a.path_kind), path_specificity(b.path_kind));
    if pa != pb {
        return pa < pb;
    }
    a.path_pattern.len() < b.path_pattern.len()
}

fn compare(a: &CompiledRule, b: &CompiledRule) -> std::cmp::Ordering {
    a.priority
        .cmp(&b.priority)
        .then_with(|| host_specificity(&b.host_pattern).cmp(&host_specificity(&a.host_pattern)))
        .then_with(|| path_specificity(b.path_kind).cmp(&path_specificity(a.path_kind)))
        .then_with(|| a.host_pattern.cmp(&b.host_pattern))
        .then_with(|| a.path_pattern.cmp(&b.path_pattern))
        .then_with(|| a.paywall_id.cmp(&b.paywall_id))
        .then_with(|| a.route_id.cmp(&b.route_id))
}

/// `cfg_` + hex SHA-256 of `text`.
pub fn config_hash(text: &str) -> String {
    format!("cfg_{}", sha256_hex(text))
}

/// The hash of the input when it does not compile: canonical JSON of the normalised paywalls.
pub fn snapshot_hash(paywalls: &[Paywall]) -> String {
    let value: Vec<Value> = paywalls
        .iter()
        .map(|p| {
            json!({
                "paywallId": p.paywall_id, "ownerId": p.owner_id, "status": p.status,
                "policy": { "pricingMode": p.policy.pricing_mode,
                            "fixedAmountMsats": p.policy.fixed_amount_msats,
                            "killSwitch": p.policy.kill_switch },
                "routes": p.routes.iter().map(|r| json!({
                    "routeId": r.route_id, "hostPattern": normalize_host(&r.host_pattern),
                    "pathPattern": normalize_path(&r.path_pattern), "upstreamUrl": r.upstream_url,
                    "protocol": r.protocol, "timeoutMs": r.timeout_ms, "priority": r.priority,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    config_hash(&canonical_json(&Value::Array(value)))
}

/// A YAML scalar: plain when that is unambiguous (the original's output), double-quoted otherwise
/// (e.g. a `*` host, which plain YAML would read as an alias).
fn scalar(text: &str) -> String {
    let plain = !text.is_empty()
        && !text.starts_with(|c: char| "*&!|>'\"%@`{}[],#?:- ".contains(c))
        && !text.ends_with(' ')
        && !text.contains(": ")
        && !text.contains(" #")
        && !text.contains(['\n', '\t'])
        && !matches!(text, "true" | "false" | "null" | "~" | "yes" | "no");
    if plain {
        text.to_owned()
    } else {
        serde_json::to_string(text).expect("strings serialise")
    }
}

/// Renders the YAML (`version: 1`, then the routes in order).
pub fn render_yaml(rules: &[CompiledRule]) -> String {
    let mut lines = vec!["version: 1".to_owned(), "routes:".to_owned()];
    for rule in rules {
        lines.push(format!("  - id: {}", scalar(&rule.id)));
        lines.push("    match:".to_owned());
        lines.push(format!("      host: {}", scalar(&rule.host_pattern)));
        lines.push(format!("      path: {}", scalar(&rule.path_pattern)));
        lines.push("    upstream:".to_owned());
        lines.push(format!("      url: {}", scalar(&rule.upstream_url)));
        lines.push(format!("      protocol: {}", rule.protocol));
        lines.push(format!("      timeout_ms: {}", rule.timeout_ms));
        lines.push("    auth:".to_owned());
        lines.push("      type: l402".to_owned());
        lines.push(format!("      paywall_id: {}", scalar(&rule.paywall_id)));
        lines.push("    pricing:".to_owned());
        lines.push("      mode: fixed_msats".to_owned());
        lines.push(format!("      amount_msats: {}", rule.amount_msats));
    }
    format!("{}\n", lines.join("\n"))
}

/// Compiles the paywalls.
pub fn compile(paywalls: &[Paywall]) -> CompiledArtifact {
    let mut diagnostics = Vec::new();
    let mut rules = Vec::new();
    for paywall in paywalls.iter().filter(|p| p.enabled()) {
        let pid = Some(paywall.paywall_id.as_str());
        if paywall.policy.pricing_mode != "fixed" {
            diagnostics.push(diag(
                "invalid_pricing_mode",
                "Only fixed pricing mode is supported",
                pid,
                None,
                Some(json!({ "pricingMode": paywall.policy.pricing_mode })),
            ));
            continue;
        }
        if paywall.policy.fixed_amount_msats <= 0 {
            diagnostics.push(diag(
                "missing_pricing",
                "fixedAmountMsats must be greater than zero",
                pid,
                None,
                Some(json!({ "fixedAmountMsats": paywall.policy.fixed_amount_msats })),
            ));
            continue;
        }
        for route in &paywall.routes {
            let rid = Some(route.route_id.as_str());
            let host = normalize_host(&route.host_pattern);
            let path = normalize_path(&route.path_pattern);
            if host.is_empty()
                || route.path_pattern.trim().is_empty()
                || route.route_id.trim().is_empty()
            {
                diagnostics.push(diag(
                    "invalid_route_pattern",
                    "hostPattern and pathPattern must be non-empty",
                    pid,
                    rid,
                    Some(json!({ "hostPattern": route.host_pattern, "pathPattern": route.path_pattern })),
                ));
                continue;
            }
            let kind = classify_path(&path);
            if kind == PathKind::Regex && path_regex(&path).is_err() {
                diagnostics.push(diag(
                    "invalid_route_pattern",
                    "pathPattern is not a valid pattern",
                    pid,
                    rid,
                    Some(json!({ "pathPattern": path })),
                ));
                continue;
            }
            let protocol = route.protocol.trim().to_lowercase();
            if protocol != "http" && protocol != "https" {
                diagnostics.push(diag(
                    "missing_route_protocol",
                    "route protocol must be http or https",
                    pid,
                    rid,
                    Some(json!({ "protocol": route.protocol })),
                ));
                continue;
            }
            let upstream = route.upstream_url.trim().to_owned();
            if upstream.is_empty() {
                diagnostics.push(diag(
                    "invalid_upstream_url",
                    "upstreamUrl must be non-empty",
                    pid,
                    rid,
                    None,
                ));
                continue;
            }
            match reqwest::Url::parse(&upstream) {
                Ok(url) if url.scheme() == protocol && url.host_str().is_some() => {}
                Ok(_) => {
                    diagnostics.push(diag(
                        "invalid_upstream_url",
                        "upstreamUrl protocol must match route protocol",
                        pid,
                        rid,
                        Some(json!({ "upstreamUrl": upstream, "routeProtocol": protocol })),
                    ));
                    continue;
                }
                Err(_) => {
                    diagnostics.push(diag(
                        "invalid_upstream_url",
                        "upstreamUrl must be a valid URL",
                        pid,
                        rid,
                        Some(json!({ "upstreamUrl": upstream })),
                    ));
                    continue;
                }
            }
            rules.push(CompiledRule {
                id: format!("{}:{}", paywall.paywall_id, route.route_id),
                paywall_id: paywall.paywall_id.clone(),
                owner_id: paywall.owner_id.clone(),
                route_id: route.route_id.clone(),
                host_pattern: host,
                path_pattern: path,
                upstream_url: upstream,
                protocol,
                timeout_ms: if route.timeout_ms > 0 {
                    route.timeout_ms
                } else {
                    15_000
                },
                priority: route.priority,
                amount_msats: paywall.policy.fixed_amount_msats,
                path_kind: kind,
            });
        }
    }
    if rules.is_empty() {
        diagnostics.push(diag(
            "no_compilable_routes",
            "No valid routes available to compile",
            None,
            None,
            None,
        ));
    }
    if !diagnostics.is_empty() {
        return invalid(paywalls, diagnostics);
    }
    rules.sort_by(compare);
    let mut seen = BTreeSet::new();
    for rule in &rules {
        let key = format!("{}::{}", rule.host_pattern, rule.path_pattern);
        if !seen.insert(key.clone()) {
            diagnostics.push(diag(
                "duplicate_route",
                format!("Duplicate host/path rule detected ({key})"),
                Some(&rule.paywall_id),
                Some(&rule.route_id),
                None,
            ));
        }
    }
    for (i, primary) in rules.iter().enumerate() {
        for secondary in &rules[i + 1..] {
            if primary.host_pattern != secondary.host_pattern || !overlaps(primary, secondary) {
                continue;
            }
            if primary.priority == secondary.priority
                && path_specificity(primary.path_kind) == path_specificity(secondary.path_kind)
                && primary.path_pattern != secondary.path_pattern
            {
                let mut d = diag(
                    "ambiguous_route",
                    format!(
                        "Ambiguous overlapping routes for host {}",
                        primary.host_pattern
                    ),
                    Some(&secondary.paywall_id),
                    Some(&secondary.route_id),
                    Some(
                        json!({ "primaryPath": primary.path_pattern, "secondaryPath": secondary.path_pattern }),
                    ),
                );
                d.related_route_id = Some(primary.route_id.clone());
                diagnostics.push(d);
            }
            if primary.priority <= secondary.priority && more_general(primary, secondary) {
                let mut d = diag(
                    "first_match_shadowed",
                    format!(
                        "Route {} is shadowed by earlier first-match rule {}",
                        secondary.route_id, primary.route_id
                    ),
                    Some(&secondary.paywall_id),
                    Some(&secondary.route_id),
                    Some(json!({
                        "primaryPriority": primary.priority, "secondaryPriority": secondary.priority,
                        "primaryPath": primary.path_pattern, "secondaryPath": secondary.path_pattern,
                    })),
                );
                d.related_route_id = Some(primary.route_id.clone());
                diagnostics.push(d);
            }
        }
    }
    if !diagnostics.is_empty() {
        return invalid(paywalls, diagnostics);
    }
    let yaml = render_yaml(&rules);
    CompiledArtifact {
        config_hash: config_hash(&yaml),
        aperture_yaml: yaml,
        rule_count: rules.len(),
        rules,
        diagnostics,
        valid: true,
    }
}

fn invalid(paywalls: &[Paywall], diagnostics: Vec<Diagnostic>) -> CompiledArtifact {
    CompiledArtifact {
        config_hash: snapshot_hash(paywalls),
        aperture_yaml: String::new(),
        rules: Vec::new(),
        diagnostics,
        rule_count: 0,
        valid: false,
    }
}

/// Reads paywalls from JSON: `{ "paywalls": [...] }` (the control plane's answer) or `[...]`.
///
/// # Errors
/// When the JSON has neither shape.
pub fn paywalls_from_json(value: &Value) -> anyhow::Result<Vec<Paywall>> {
    let list = value
        .get("paywalls")
        .or_else(|| value.get("result").and_then(|r| r.get("paywalls")))
        .unwrap_or(value);
    serde_json::from_value(list.clone()).map_err(|e| anyhow::anyhow!("invalid paywalls: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paywall(id: &str, amount: i64, routes: Vec<(&str, &str, &str, i64)>) -> Paywall {
        Paywall {
            paywall_id: id.into(),
            owner_id: format!("owner_{id}"),
            name: None,
            status: "active".into(),
            policy: PaywallPolicy {
                pricing_mode: "fixed".into(),
                fixed_amount_msats: amount,
                kill_switch: false,
            },
            routes: routes
                .into_iter()
                .map(|(rid, host, path, priority)| PaywallRoute {
                    route_id: rid.into(),
                    host_pattern: host.into(),
                    path_pattern: path.into(),
                    upstream_url: "https://upstream.example.com/v1".into(),
                    protocol: "https".into(),
                    timeout_ms: 0,
                    priority,
                })
                .collect(),
        }
    }

    fn codes(artifact: &CompiledArtifact) -> Vec<&str> {
        artifact
            .diagnostics
            .iter()
            .map(|d| d.code.as_str())
            .collect()
    }

    #[test]
    fn compiles_the_original_fixture_to_byte_identical_yaml() {
        let paywalls = vec![
            paywall(
                "pw_weather",
                2_500,
                vec![(
                    "route_weather",
                    "OpenAgents.com",
                    "/api/weather/premium",
                    20,
                )],
            ),
            paywall(
                "pw_news",
                1_800,
                vec![("route_news", "openagents.com", "api/news/premium", 10)],
            ),
        ];
        let first = compile(&paywalls);
        let mut reversed = paywalls.clone();
        reversed.reverse();
        let second = compile(&reversed);
        assert!(first.valid, "{:?}", first.diagnostics);
        assert_eq!(first.aperture_yaml, second.aperture_yaml);
        assert_eq!(first.config_hash, second.config_hash);
        assert_eq!(
            first.aperture_yaml,
            "version: 1\nroutes:\n  - id: pw_news:route_news\n    match:\n      host: openagents.com\n      path: /api/news/premium\n    upstream:\n      url: https://upstream.example.com/v1\n      protocol: https\n      timeout_ms: 15000\n    auth:\n      type: l402\n      paywall_id: pw_news\n    pricing:\n      mode: fixed_msats\n      amount_msats: 1800\n  - id: pw_weather:route_weather\n    match:\n      host: openagents.com\n      path: /api/weather/premium\n    upstream:\n      url: https://upstream.example.com/v1\n      protocol: https\n      timeout_ms: 15000\n    auth:\n      type: l402\n      paywall_id: pw_weather\n    pricing:\n      mode: fixed_msats\n      amount_msats: 2500\n"
        );
        assert_eq!(first.config_hash, config_hash(&first.aperture_yaml));
        assert!(first.config_hash.starts_with("cfg_"));
    }

    #[test]
    fn orders_by_priority_then_specificity() {
        let artifact = compile(&[paywall(
            "pw",
            1,
            vec![
                ("catch", "api.example.com", "/*", 5),
                ("prefix", "api.example.com", "/v1/*", 5),
                ("exact", "api.example.com", "/v1/x", 5),
            ],
        )]);
        // Same priority, overlapping, a more general route would come later: fine; but the
        // catch-all after more specific ones at equal priority is not shadowing.
        assert!(artifact.valid, "{:?}", artifact.diagnostics);
        let order: Vec<&str> = artifact.rules.iter().map(|r| r.route_id.as_str()).collect();
        assert_eq!(order, ["exact", "prefix", "catch"]);
    }

    #[test]
    fn a_general_route_with_higher_precedence_shadows_a_specific_one() {
        let artifact = compile(&[paywall(
            "pw",
            1,
            vec![("catch", "h.com", "/*", 1), ("exact", "h.com", "/v1/x", 2)],
        )]);
        assert!(!artifact.valid);
        assert_eq!(codes(&artifact), ["first_match_shadowed"]);
        assert_eq!(
            artifact.diagnostics[0].related_route_id.as_deref(),
            Some("catch")
        );
    }

    #[test]
    fn duplicate_and_ambiguous_routes_fail() {
        let dup = compile(&[
            paywall("a", 1, vec![("r1", "h.com", "/x", 1)]),
            paywall("b", 1, vec![("r2", "H.com", "x", 1)]),
        ]);
        assert!(codes(&dup).contains(&"duplicate_route"));
        let ambiguous = compile(&[paywall(
            "a",
            1,
            vec![("r1", "h.com", "/v1/*", 1), ("r2", "h.com", "/v1/a/*", 1)],
        )]);
        assert!(
            codes(&ambiguous).contains(&"ambiguous_route"),
            "{:?}",
            ambiguous.diagnostics
        );
    }

    #[test]
    fn input_errors_are_diagnosed_and_hash_the_snapshot() {
        let mut bad_mode = paywall("m", 1, vec![("r", "h.com", "/x", 1)]);
        bad_mode.policy.pricing_mode = "dynamic".into();
        let mut bad_upstream = paywall("u", 1, vec![("r", "h.com", "/y", 1)]);
        bad_upstream.routes[0].upstream_url = "http://plain.example.com".into();
        let mut bad_url = paywall("v", 1, vec![("r", "h.com", "/z", 1)]);
        bad_url.routes[0].upstream_url = "not a url".into();
        let mut bad_protocol = paywall("p", 1, vec![("r", "h.com", "/w", 1)]);
        bad_protocol.routes[0].protocol = "ftp".into();
        let input = vec![
            bad_mode,
            paywall("z", 0, vec![("r", "h.com", "/x", 1)]),
            paywall("e", 1, vec![("r", " ", "/x", 1)]),
            paywall("g", 1, vec![("r", "h.com", "/a/(unclosed", 1)]),
            bad_upstream,
            bad_url,
            bad_protocol,
        ];
        let artifact = compile(&input);
        assert!(!artifact.valid);
        assert_eq!(
            codes(&artifact),
            [
                "invalid_pricing_mode",
                "missing_pricing",
                "invalid_route_pattern",
                "invalid_route_pattern",
                "invalid_upstream_url",
                "invalid_upstream_url",
                "missing_route_protocol",
                "no_compilable_routes"
            ]
        );
        assert_eq!(artifact.config_hash, snapshot_hash(&input));
        assert!(artifact.aperture_yaml.is_empty());
        let nothing = compile(&[]);
        assert_eq!(codes(&nothing), ["no_compilable_routes"]);
    }

    #[test]
    fn paused_and_killed_paywalls_are_left_out() {
        let mut paused = paywall("p", 1, vec![("r", "h.com", "/p", 1)]);
        paused.status = "paused".into();
        let mut killed = paywall("k", 1, vec![("r", "h.com", "/k", 1)]);
        killed.policy.kill_switch = true;
        let artifact = compile(&[
            paused,
            killed,
            paywall("a", 1, vec![("r", "h.com", "/a", 1)]),
        ]);
        assert_eq!(artifact.rule_count, 1);
    }

    #[test]
    fn wildcard_hosts_render_as_valid_yaml() {
        let artifact = compile(&[paywall("a", 1, vec![("r", "*", "/a", 1)])]);
        assert!(artifact.aperture_yaml.contains("host: \"*\""));
        let parsed: serde_yaml::Value = serde_yaml::from_str(&artifact.aperture_yaml).unwrap();
        assert_eq!(parsed["routes"][0]["match"]["host"], "*");
    }

    #[test]
    fn regex_and_glob_paths_match_as_intended() {
        assert_eq!(classify_path("/a/*"), PathKind::Prefix);
        assert_eq!(classify_path("/a/*/b"), PathKind::Regex);
        assert_eq!(classify_path("/v[0-9]+/x"), PathKind::Regex);
        assert!(path_regex("/a/*/b").unwrap().is_match("/a/zz/b"));
        assert!(path_regex("/v[0-9]+/x").unwrap().is_match("/v12/x"));
        assert!(!path_regex("/v[0-9]+/x").unwrap().is_match("/v12/x/y"));
    }
}
