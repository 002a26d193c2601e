//! Property tests (fuzz targets) over the parsers that take outside input: signature
//! headers, form and JSON bodies, recipe and connector YAML, JSONPath and
//! templates. Each runs a fixed number of cases (`FUZZ_CASES`, default 256),
//! so CI spends a bounded time here; set `PROPTEST_CASES` higher to dig.
//! The property is the same everywhere: any input gives an answer or an
//! error, never a panic, and forged signatures never pass.

use proptest::prelude::*;
use serde_json::{json, Value};
use switchboard::secret::Secret;
use switchboard::signature::{Request, SignatureConfig, Verifier};

const FUZZ_CASES: u32 = 256;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(FUZZ_CASES);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Every scheme, with a secret each accepts.
fn verifiers() -> Vec<Verifier> {
    [
        json!({"scheme": "github", "secret": "s"}),
        json!({"scheme": "shopify", "secret": "s"}),
        json!({"scheme": "stripe", "secret": "s"}),
        json!({"scheme": "slack", "secret": "s"}),
        json!({"scheme": "zendesk", "secret": "s"}),
        json!({"scheme": "hubspot_v3", "secret": "s"}),
        json!({"scheme": "standard_webhooks", "secret": "s"}),
        json!({"scheme": "hmac", "secret": "s", "header": "X-Signature", "prefix": "sha256=",
               "timestamp_header": "X-Timestamp", "id_header": "X-Id"}),
        json!({"scheme": "token", "secret": "s", "from": {"header": "X-Switchboard-Token"}}),
        json!({"scheme": "token", "secret": "s", "from": {"field": "HandshakeKey"}}),
        json!({"scheme": "token", "secret": "s", "from": {"query": "token"}}),
    ]
    .into_iter()
    .map(|c| {
        let c: SignatureConfig = serde_json::from_value(c).unwrap();
        let secret = match &c {
            SignatureConfig::StandardWebhooks(_) => "whsec_c2VjcmV0LWtleS1ieXRlcw==",
            _ => "a-signing-secret",
        };
        Verifier::new(&c, vec![Secret::new(secret)]).unwrap()
    })
    .collect()
}

/// Header names the schemes read.
const HEADERS: &[&str] = &[
    "x-hub-signature-256",
    "x-shopify-hmac-sha256",
    "stripe-signature",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "x-zendesk-webhook-signature",
    "x-zendesk-webhook-signature-timestamp",
    "x-hubspot-signature-v3",
    "x-hubspot-request-timestamp",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "svix-id",
    "svix-timestamp",
    "svix-signature",
    "x-signature",
    "x-timestamp",
    "x-id",
    "x-switchboard-token",
    "content-type",
];

/// Values shaped like signature headers, and garbage.
fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,80}",
        "t=[0-9]{0,12},v1=[0-9a-f]{0,64}(,v0=[0-9a-f]{0,8})?",
        "v0=[0-9a-f]{0,64}",
        "sha256=[0-9a-fA-F]{0,70}",
        "(v1,[A-Za-z0-9+/=]{0,44} ?){0,3}",
        "[0-9]{0,20}",
        "20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z",
        "[A-Za-z0-9+/=]{0,60}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn signature_headers_never_panic_and_forgeries_fail(
        headers in proptest::collection::vec((0..HEADERS.len(), header_value()), 0..8),
        body in proptest::collection::vec(any::<u8>(), 0..256),
        now in 0i64..4_000_000_000,
    ) {
        let mut map = http::HeaderMap::new();
        for (i, v) in &headers {
            if let Ok(v) = http::HeaderValue::from_str(v) {
                map.append(HEADERS[*i], v);
            }
        }
        let req = Request { method: "POST", url: "https://hub.example.com/hooks/x", headers: &map, body: &body };
        for v in verifiers() {
            prop_assert!(v.verify(&req, now).is_err());
        }
    }

    #[test]
    fn jsonpath_compiles_or_errs(src in "[$@.\\[\\]*?()'\"a-z0-9=<>!&|, -]{0,40}") {
        if let Ok(p) = switchboard::jsonpath::JsonPath::compile(&src) {
            let doc = json!({"a": [1, {"b": "x"}], "c": {"d": null}});
            let _ = p.pick(&doc);
            let _ = p.first(&doc);
        }
    }

    #[test]
    fn templates_compile_or_err_and_render_bounded(
        src in "[ -~]{0,60}",
        n in any::<i64>(),
    ) {
        let mut t = switchboard::template::Templates::new();
        if let Ok(c) = t.compile(&src) {
            let ctx = json!({"event": {"n": n, "s": "x", "l": [1, 2, 3]}, "steps": {}, "vars": {}});
            if let Ok(Value::String(s)) = t.render(&c, &ctx) {
                prop_assert!(s.len() <= switchboard::template::MAX_RENDER_BYTES);
            }
        }
    }

    #[test]
    fn template_expressions_over_event_data_are_bounded(
        expr in prop_oneof![
            Just("event.l * event.n"), Just("event.s * event.n"), Just("range(event.n)"),
            Just("(event.l * event.n) | join(',')"), Just("(event.l * event.n) | list | length"),
            Just("event.s | replace('x', event.s * 1000)"), Just("(event.l * event.n) | tojson"),
        ],
        n in 0i64..100_000_000,
    ) {
        let mut t = switchboard::template::Templates::new();
        let c = t.compile(&format!("{{{{ {expr} }}}}")).unwrap();
        let ctx = json!({"event": {"n": n, "s": "xyz", "l": [1, 2]}});
        let _ = t.render(&c, &ctx);
    }

    #[test]
    fn connector_yaml_loads_or_errs(text in yaml_text()) {
        let path = std::path::Path::new("connectors/x.yaml");
        let _ = switchboard::yaml::load::<switchboard::connector::config::ConnectorFile>(path, &text);
    }

    #[test]
    fn recipe_yaml_loads_or_errs(text in yaml_text()) {
        let path = std::path::Path::new("recipes/x.yaml");
        let _ = switchboard::yaml::load::<switchboard::recipe::config::RecipeFile>(path, &text);
    }

    #[test]
    fn bodies_parse_or_err(
        body in prop_oneof![
            "[a-z0-9=&%+._~\\[\\] -]{0,80}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..120),
            "[\\[\\]{}\",:0-9a-z. -]{0,80}".prop_map(String::into_bytes),
        ],
        form in any::<bool>(),
    ) {
        let mut headers = http::HeaderMap::new();
        let ctype = if form { "application/x-www-form-urlencoded" } else { "application/json" };
        headers.insert("content-type", http::HeaderValue::from_static(ctype));
        if let Ok(v) = switchboard::ingress::parse_body(&headers, &body) {
            prop_assert!(!form || v.is_object(), "{v}");
        }
    }
}

/// YAML-ish text: a shipped file's lines, shuffled and cut, plus noise.
fn yaml_text() -> impl Strategy<Value = String> {
    let lines: Vec<String> = ["connectors/zendesk.yaml", "recipes/crm-enrichment.yaml"]
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(f))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    let n = lines.len().max(1);
    proptest::collection::vec(
        prop_oneof![
            4 => (0..n).prop_map(move |i| lines.get(i).cloned().unwrap_or_default()),
            1 => "[ -~]{0,30}",
            1 => "( {0,6})[a-z_]{1,8}: (\\{|\\[|\"|'|&|\\*|!|\\||>)?[ -~]{0,10}",
        ],
        0..40,
    )
    .prop_map(|l| l.join("\n"))
}
