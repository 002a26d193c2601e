//! The tests of the verifier and its primitives; each scheme's own tests are in
//! its file.

use super::primitives::{header_text, Tolerance};
use super::test_support::*;
use super::*;
use crate::secret::Secret;
use proptest::prelude::*;
use serde_json::json;

fn config_error(config: serde_json::Value, secrets: &[&str]) -> ConfigError {
    let config: SignatureConfig = serde_json::from_value(config).expect("parses");
    Verifier::new(&config, secrets.iter().map(|s| Secret::new(*s)).collect())
        .expect_err("config must be rejected")
}

/// Why a `signature:` block does not parse.
fn parse_error(config: serde_json::Value) -> String {
    serde_json::from_value::<SignatureConfig>(config)
        .expect_err("config must not parse")
        .to_string()
}

#[test]
fn none_passes_everything_and_takes_no_secret() {
    let v = verifier(json!({"scheme": "none"}), &[]);
    assert!(matches!(v.config(), SignatureConfig::None {}));
    assert_eq!(v.delivery_id_header(), None);
    let ok = run(&v, &[], b"anything", 0).expect("none passes");
    assert_eq!(ok, Verified::new(None, None));
    let e = parse_error(json!({"scheme": "none", "secret": "s"}));
    assert!(e.starts_with("unknown field `secret`"), "{e}");
}

#[test]
fn each_scheme_takes_only_its_own_options() {
    for (config, expected) in [
        (
            json!({"scheme": "stripe", "secret": "s", "prefix": "v1="}),
            "unknown field `prefix`, expected `secret` or `tolerance`",
        ),
        (
            json!({"scheme": "github", "secret": "s", "id_header": "x-id"}),
            "unknown field `id_header`, expected `secret`",
        ),
        (
            json!({"scheme": "github", "secret": "s", "tolerance": "1m"}),
            "unknown field `tolerance`, expected `secret`",
        ),
        (json!({"scheme": "github"}), "missing field `secret`"),
        (
            json!({"scheme": "hmac", "secret": "s"}),
            "missing field `header`",
        ),
        (
            json!({"scheme": "hmac", "secret": "s", "header": "bad header"}),
            "invalid value: string \"bad header\", expected a valid HTTP header name",
        ),
        (
            json!({"scheme": "hmac", "secret": "s", "header": "x", "id_header": "a b"}),
            "invalid value: string \"a b\", expected a valid HTTP header name",
        ),
        (json!({"scheme": "gitlab"}), "unknown variant `gitlab`"),
    ] {
        let e = parse_error(config.clone());
        assert!(e.starts_with(expected), "{config}: {e}");
    }
}

#[test]
fn secrets_that_cannot_work_are_rejected_at_load() {
    assert_eq!(
        config_error(json!({"scheme": "slack", "secret": "s"}), &[]),
        ConfigError::NoSecrets { scheme: "slack" }
    );
    assert_eq!(
        config_error(json!({"scheme": "slack", "secret": "s"}), &["ok", ""]),
        ConfigError::EmptySecret { index: 2 }
    );
    let e = config_error(
        json!({"scheme": "standard_webhooks", "secret": "s"}),
        &["whsec_not base64!"],
    );
    assert_eq!(e, ConfigError::BadStandardWebhooksSecret { index: 1 });
    assert_eq!(e.key(), "secret");
}

#[test]
fn hmac_tolerance_needs_a_timestamp_header() {
    let e = config_error(
        json!({"scheme": "hmac", "secret": "s", "header": "x-sig", "tolerance": 60}),
        &["k"],
    );
    assert_eq!(e, ConfigError::ToleranceUnused);
    assert_eq!(e.key(), "tolerance");
    assert_eq!(
        e.to_string(),
        "`tolerance` has no effect: signature scheme `hmac` signs no timestamp (set `timestamp_header` to sign one)"
    );
}

#[test]
fn a_full_hmac_block_parses() {
    let c: SignatureConfig = serde_json::from_value(json!({
        "scheme": "hmac", "secret": "s", "header": "X-Sig", "algorithm": "sha512",
        "encoding": "base64", "prefix": "sha512=", "timestamp_header": "X-Ts",
        "id_header": "X-Id", "tolerance": "2m"
    }))
    .expect("full hmac block parses");
    let SignatureConfig::Hmac(h) = &c else {
        panic!("not hmac: {c:?}")
    };
    assert_eq!(h.algorithm, Algorithm::Sha512);
    assert_eq!(h.encoding, Encoding::Base64);
    assert_eq!(h.header.as_str(), "X-Sig");
    assert_eq!(c.secret(), Some("s"));
    assert_eq!(c.name(), "hmac");
}

#[test]
fn tolerance_defaults_to_five_minutes_and_is_inclusive() {
    let t = Tolerance::from_config(None);
    assert_eq!(t.millis, 300_000);
    assert!(t.check_secs("h", 1000, 1300).is_ok());
    assert!(t.check_secs("h", 1000, 700).is_ok());
    let past = t.check_secs("h", 1000, 1301).expect_err("301 s old");
    assert_eq!(past.check(), "timestamp_stale");
    assert_eq!(
        past.to_string(),
        "timestamp in h is 301 s old, beyond the 300 s tolerance"
    );
    let future = t.check_secs("h", 1000, 699).expect_err("301 s ahead");
    assert!(
        future.to_string().contains("301 s in the future"),
        "{future}"
    );
    // Extreme values from a sender cannot overflow.
    assert!(t.check_secs("h", i64::MAX, i64::MIN).is_err());
}

#[test]
fn header_lookup_is_case_insensitive() {
    let map = headers(&[("x-hub-signature-256", "v")]);
    assert_eq!(header_text(&map, "X-Hub-Signature-256"), Ok(Some("v")));
}

#[test]
fn non_utf8_header_values_are_malformed_not_panics() {
    let mut map = HeaderMap::new();
    map.insert(
        "x-hub-signature-256",
        http::HeaderValue::from_bytes(b"sha256=\xff\xfe").expect("obs-text is allowed"),
    );
    let v = verifier(json!({"scheme": "github", "secret": "s"}), &["k"]);
    let req = Request {
        method: "POST",
        url: URL,
        headers: &map,
        body: b"{}",
    };
    let e = v.verify(&req, 0).expect_err("not utf-8");
    assert_eq!(e.check(), "signature_malformed");
    assert!(e.to_string().contains("X-Hub-Signature-256"), "{e}");
}

#[test]
fn error_messages_never_contain_the_secret_or_the_expected_signature() {
    let secret = "It's a Secret to Everybody";
    let v = verifier(json!({"scheme": "github", "secret": "gh"}), &[secret]);
    let expected = hex::encode(hmac256(secret.as_bytes(), b"Hello, World!"));
    let sent = format!("sha256={}", "0".repeat(64));
    let headers = headers(&[("X-Hub-Signature-256", &sent)]);
    let req = Request {
        method: "POST",
        url: URL,
        headers: &headers,
        body: b"Hello, World!",
    };
    let e = v.verify(&req, 0).expect_err("wrong signature");
    for shown in [e.to_string(), format!("{e:?}"), format!("{v:?}")] {
        assert!(!shown.contains(secret), "{shown}");
        assert!(!shown.contains(&expected), "{shown}");
    }
}

/// Every scheme, with the options that change its code paths.
fn all_verifiers() -> Vec<Verifier> {
    let sw = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    [
        json!({"scheme": "none"}),
        json!({"scheme": "standard_webhooks", "secret": "s"}),
        json!({"scheme": "stripe", "secret": "s"}),
        json!({"scheme": "github", "secret": "s"}),
        json!({"scheme": "slack", "secret": "s"}),
        json!({"scheme": "shopify", "secret": "s"}),
        json!({"scheme": "zendesk", "secret": "s", "tolerance": "1h"}),
        json!({"scheme": "hubspot_v3", "secret": "s"}),
        json!({"scheme": "hmac", "secret": "s", "header": "X-Sig"}),
        json!({"scheme": "hmac", "secret": "s", "header": "X-Sig", "algorithm": "sha512",
               "encoding": "base64", "prefix": "sha512=", "timestamp_header": "X-Ts",
               "id_header": "X-Id"}),
        json!({"scheme": "token", "secret": "s", "from": {"header": "X-Token"}}),
        json!({"scheme": "token", "secret": "s", "from": {"query": "token"}}),
        json!({"scheme": "token", "secret": "s", "from": {"field": "HandshakeKey"}}),
    ]
    .into_iter()
    .map(|c| {
        let secret = if c["scheme"] == "standard_webhooks" {
            sw
        } else {
            "key"
        };
        let secrets: &[&str] = if c["scheme"] == "none" {
            &[]
        } else {
            &[secret]
        };
        verifier(c, secrets)
    })
    .collect()
}

/// Every header name any scheme reads.
const HEADER_NAMES: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "svix-id",
    "svix-timestamp",
    "svix-signature",
    "stripe-signature",
    "x-hub-signature-256",
    "x-github-delivery",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "x-shopify-hmac-sha256",
    "x-shopify-webhook-id",
    "x-zendesk-webhook-signature",
    "x-zendesk-webhook-signature-timestamp",
    "x-zendesk-webhook-invocation-id",
    "x-hubspot-signature-v3",
    "x-hubspot-request-timestamp",
    "x-sig",
    "x-ts",
    "x-id",
    "x-token",
    "content-type",
];

/// Header values that look almost right, mixed with arbitrary bytes, so
/// the parsers get past their first checks.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"application/x-www-form-urlencoded".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..80),
        "[ -~]{0,80}".prop_map(String::into_bytes),
        "(v1,|v1=|v0=|t=|sha256=|sha512=|,| |=|[0-9a-fA-F+/=]{1,20}|-?[0-9]{1,25}|\\.){0,12}"
            .prop_map(String::into_bytes),
        "20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?Z?"
            .prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn verify_never_panics(
        values in proptest::collection::vec(
            (proptest::sample::select(HEADER_NAMES), header_value()), 0..8),
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            "(HandshakeKey|key|=|&|%[0-9a-fA-F]{0,2}|\\{|\"|:|[a-z0-9]{1,5}){0,12}"
                .prop_map(String::into_bytes),
        ],
        method in "[A-Za-z%]{0,8}",
        url in prop_oneof!["\\PC{0,40}", "http://h/x\\?(token|=|&|%[0-9a-f]{0,2}|#|[a-z]{1,4}){0,8}"],
        now in any::<i64>(),
    ) {
        let mut map = HeaderMap::new();
        for (name, value) in values {
            // Values the http crate itself refuses (CR, LF, NUL) can never reach us.
            if let Ok(value) = http::HeaderValue::from_bytes(&value) {
                map.append(name, value);
            }
        }
        let req = Request { method: &method, url: &url, headers: &map, body: &body };
        for v in all_verifiers() {
            if let Err(e) = v.verify(&req, now) {
                // Every failure maps to one of the documented check names.
                prop_assert!([
                    "signature_missing", "signature_malformed", "timestamp_missing",
                    "timestamp_malformed", "timestamp_stale", "signature_mismatch",
                ].contains(&e.check()));
            }
        }
    }
}
