//! Inbound webhook signature verification: is this request really from the sender?
//!
//! A leaf module: it knows the `http` types and nothing of the layers that use
//! it (`connector` compiles a connector's `signature:` block with it, `ingress`
//! verifies requests with it). A connector's `webhook.signature:` block is a
//! [`SignatureConfig`], one variant per scheme owning its fields, checked by
//! serde when the file loads. [`Verifier::new`] compiles it with the secret
//! values once, so a bad secret (a Standard Webhooks secret that is not
//! base64, …) fails at startup and never on the first webhook.
//! [`Verifier::verify`] then checks one request and either returns what it
//! learnt ([`Verified`]: delivery id, timestamp) or the first check that
//! failed ([`SignatureError`], which the ingress turns into a 401 carrying
//! [`SignatureError::check`]).
//!
//! One file per scheme family; each exports one `verify` function and shares
//! the helpers below (header reading, timestamp window, HMAC comparison).
//!
//! Invariants — what this module must never do:
//! - compare signatures with `==`: every comparison goes through
//!   [`subtle::ConstantTimeEq`] ([`Keys::any_matches`]);
//! - put a secret, a key or the *expected* signature into an error, a log or a
//!   `Debug` output ([`Keys`] prints `***`, errors carry only header names and
//!   static reasons);
//! - panic on anything the sender controls (headers, body, URL, method);
//! - do I/O: the caller resolves secret names to values and passes the clock.

mod config;
mod generic;
mod github;
mod hubspot;
mod shopify;
mod slack;
mod standard;
mod stripe;
mod token;
mod zendesk;

use std::fmt;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Sha256, Sha512};
use subtle::{Choice, ConstantTimeEq};

use crate::duration::HumanDuration;
use crate::secret::Secret;

pub use config::{
    Algorithm, Encoding, HeaderName, HmacConfig, SignatureConfig, Timed, TokenConfig, TokenSource,
    Untimed,
};
/// Sign a body as Zendesk does (`switchboard demo send`).
pub use zendesk::sign as sign_zendesk;

/// Allowed clock skew when `tolerance:` is not given: the 5 minutes that
/// Stripe, Slack, Svix and HubSpot all recommend.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// A `signature:` block that parsed but cannot work with the secret values
/// given. Raised by [`Verifier::new`], i.e. at load time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("signature scheme `{scheme}` needs at least one signing secret value, got none")]
    NoSecrets { scheme: &'static str },
    #[error("signing secret #{index} (counting from 1) is empty")]
    EmptySecret { index: usize },
    #[error("signing secret #{index} (counting from 1) is not a Standard Webhooks secret: expected base64, optionally prefixed with `whsec_`")]
    BadStandardWebhooksSecret { index: usize },
    #[error("`tolerance` has no effect: signature scheme `hmac` signs no timestamp (set `timestamp_header` to sign one)")]
    ToleranceUnused,
}

impl ConfigError {
    /// The key of the `signature:` block the error is about, so the loader
    /// can point at it.
    pub fn key(&self) -> &'static str {
        match self {
            ConfigError::ToleranceUnused => "tolerance",
            _ => "secret",
        }
    }
}

/// One inbound request, as much of it as any scheme signs.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// HTTP method, upper case as received (`POST`). Only HubSpot v3 signs it.
    pub method: &'a str,
    /// Full URL as the sender addressed it (scheme://host/path?query). Only
    /// HubSpot v3 signs it, so behind a proxy the ingress must rebuild the
    /// public URL, not the one the proxy forwarded to.
    pub url: &'a str,
    pub headers: &'a HeaderMap,
    /// The raw body bytes, exactly as received (never re-serialized JSON).
    pub body: &'a [u8],
}
/// What a successful verification learnt about the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The sender's delivery id, when the scheme has one and it was sent.
    /// Prefer this over reading [`Verifier::delivery_id_header`] yourself: it
    /// also honours the `svix-id` fallback of Standard Webhooks.
    pub delivery_id: Option<String>,
    /// The signed timestamp in unix seconds, for schemes that sign one.
    pub timestamp: Option<i64>,
}

/// Which way a stale timestamp is off; part of the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skew {
    Past,
    Future,
}

impl fmt::Display for Skew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Skew::Past => "old",
            Skew::Future => "in the future",
        })
    }
}

/// Why a request failed verification. The message names the header and the
/// check; it never contains a secret, the expected signature or the value the
/// sender sent (that is attacker-controlled and goes to logs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature header {header} is missing")]
    SignatureMissing { header: String },
    #[error("signature header {header} is malformed: {reason}")]
    SignatureMalformed {
        header: String,
        reason: &'static str,
    },
    #[error("timestamp header {header} is missing")]
    TimestampMissing { header: String },
    #[error("timestamp header {header} is malformed: {reason}")]
    TimestampMalformed {
        header: String,
        reason: &'static str,
    },
    #[error("timestamp in {header} is {secs} s {skew}, beyond the {tolerance_secs} s tolerance")]
    TimestampStale {
        header: String,
        secs: u64,
        skew: Skew,
        tolerance_secs: u64,
    },
    #[error("signature in {header} does not match the request signed with any configured secret")]
    SignatureMismatch { header: String },
    /// The `token` scheme's checks; `place` says where the token was looked for.
    #[error("token {place} is missing")]
    TokenMissing { place: String },
    #[error("token {place} is malformed: {reason}")]
    TokenMalformed { place: String, reason: &'static str },
    #[error("token in {place} does not match any configured secret")]
    TokenMismatch { place: String },
}

impl SignatureError {
    /// Stable machine name of the failed check, used in the 401 JSON body.
    pub fn check(&self) -> &'static str {
        match self {
            SignatureError::SignatureMissing { .. } | SignatureError::TokenMissing { .. } => {
                "signature_missing"
            }
            SignatureError::SignatureMalformed { .. } | SignatureError::TokenMalformed { .. } => {
                "signature_malformed"
            }
            SignatureError::TimestampMissing { .. } => "timestamp_missing",
            SignatureError::TimestampMalformed { .. } => "timestamp_malformed",
            SignatureError::TimestampStale { .. } => "timestamp_stale",
            SignatureError::SignatureMismatch { .. } | SignatureError::TokenMismatch { .. } => {
                "signature_mismatch"
            }
        }
    }

    fn token_missing(place: String) -> Self {
        SignatureError::TokenMissing { place }
    }

    fn token_malformed(place: String, reason: &'static str) -> Self {
        SignatureError::TokenMalformed { place, reason }
    }

    fn token_mismatch(place: String) -> Self {
        SignatureError::TokenMismatch { place }
    }

    fn missing(header: &str) -> Self {
        SignatureError::SignatureMissing {
            header: header.to_owned(),
        }
    }

    fn malformed(header: &str, reason: &'static str) -> Self {
        SignatureError::SignatureMalformed {
            header: header.to_owned(),
            reason,
        }
    }

    fn mismatch(header: &str) -> Self {
        SignatureError::SignatureMismatch {
            header: header.to_owned(),
        }
    }

    fn timestamp_missing(header: &str) -> Self {
        SignatureError::TimestampMissing {
            header: header.to_owned(),
        }
    }

    fn timestamp_malformed(header: &str, reason: &'static str) -> Self {
        SignatureError::TimestampMalformed {
            header: header.to_owned(),
            reason,
        }
    }
}

/// A compiled `signature:` block: the scheme with its options, and the key
/// bytes. Built once at load time by [`Verifier::new`]; [`Verifier::verify`]
/// does no parsing of configuration.
#[derive(Debug)]
pub struct Verifier {
    config: SignatureConfig,
    keys: Keys,
    tolerance: Tolerance,
}

impl Verifier {
    /// Compile `config`. `secrets` holds every active signing secret (several
    /// during a rotation) of the secret named by `config.secret()`.
    pub fn new(config: &SignatureConfig, secrets: Vec<Secret>) -> Result<Verifier, ConfigError> {
        let keys = match config {
            SignatureConfig::None {} => Keys(Vec::new()),
            _ if secrets.is_empty() => {
                return Err(ConfigError::NoSecrets {
                    scheme: config.name(),
                })
            }
            SignatureConfig::StandardWebhooks(_) => standard::decode_keys(&secrets)?,
            _ => Keys::from_secrets(&secrets)?,
        };
        if let SignatureConfig::Hmac(h) = config {
            if h.tolerance.is_some() && h.timestamp_header.is_none() {
                return Err(ConfigError::ToleranceUnused);
            }
        }
        Ok(Verifier {
            config: config.clone(),
            keys,
            tolerance: Tolerance::from_config(config.tolerance()),
        })
    }

    /// The configuration this verifier was compiled from.
    pub fn config(&self) -> &SignatureConfig {
        &self.config
    }

    /// Name of the header carrying the sender's delivery id, if the scheme has
    /// one. Stripe, Slack and HubSpot have none (their ids are in the body).
    pub fn delivery_id_header(&self) -> Option<&str> {
        match &self.config {
            SignatureConfig::StandardWebhooks(_) => Some(standard::ID_HEADER),
            SignatureConfig::Github(_) => Some(github::DELIVERY_HEADER),
            SignatureConfig::Shopify(_) => Some(shopify::WEBHOOK_ID_HEADER),
            SignatureConfig::Zendesk(_) => Some(zendesk::INVOCATION_ID_HEADER),
            SignatureConfig::Hmac(h) => h.id_header.as_ref().map(HeaderName::as_str),
            SignatureConfig::None {}
            | SignatureConfig::Stripe(_)
            | SignatureConfig::Slack(_)
            | SignatureConfig::HubspotV3(_)
            | SignatureConfig::Token(_) => None,
        }
    }

    /// The body field that carries a `token` scheme's token. Ingress removes
    /// it from the parsed body, so the stored event never holds the secret.
    pub fn secret_field(&self) -> Option<&str> {
        match &self.config {
            SignatureConfig::Token(TokenConfig {
                from: TokenSource::Field(name),
                ..
            }) => Some(name),
            _ => None,
        }
    }

    /// Does this scheme sign a timestamp (so a captured delivery goes stale)?
    pub fn signs_timestamp(&self) -> bool {
        match &self.config {
            SignatureConfig::StandardWebhooks(_)
            | SignatureConfig::Stripe(_)
            | SignatureConfig::Slack(_)
            | SignatureConfig::Zendesk(_)
            | SignatureConfig::HubspotV3(_) => true,
            SignatureConfig::Hmac(h) => h.timestamp_header.is_some(),
            SignatureConfig::None {}
            | SignatureConfig::Github(_)
            | SignatureConfig::Shopify(_)
            | SignatureConfig::Token(_) => false,
        }
    }

    /// A key for what the sender signed in a verified request, for refusing
    /// its replay within the tolerance: a hash of the signed timestamp, the
    /// delivery id where the scheme signs it (Standard Webhooks) and the
    /// body. Unsigned parts (Zendesk's invocation id, Stripe's extra `v1=`
    /// entries) are left out, so changing them does not make a new key.
    /// `None` for schemes that sign no timestamp.
    pub fn replay_key(&self, verified: &Verified, body: &[u8]) -> Option<String> {
        let ts = verified.timestamp.filter(|_| self.signs_timestamp())?;
        let signed_id = match &self.config {
            SignatureConfig::StandardWebhooks(_) => verified.delivery_id.as_deref(),
            _ => None,
        };
        let mut h = <Sha256 as sha2::Digest>::new();
        sha2::Digest::update(&mut h, ts.to_string().as_bytes());
        sha2::Digest::update(&mut h, b"\0");
        sha2::Digest::update(&mut h, signed_id.unwrap_or("").as_bytes());
        sha2::Digest::update(&mut h, b"\0");
        sha2::Digest::update(&mut h, body);
        Some(hex::encode(sha2::Digest::finalize(h)))
    }

    /// Verify one request. `now` is the current time in unix seconds, passed
    /// in so tests control the clock.
    pub fn verify(&self, req: &Request<'_>, now: i64) -> Result<Verified, SignatureError> {
        let (keys, tolerance) = (&self.keys, self.tolerance);
        match &self.config {
            SignatureConfig::None {} => Ok(Verified {
                delivery_id: None,
                timestamp: None,
            }),
            SignatureConfig::StandardWebhooks(_) => standard::verify(keys, tolerance, req, now),
            SignatureConfig::Stripe(_) => stripe::verify(keys, tolerance, req, now),
            SignatureConfig::Github(_) => github::verify(keys, req),
            SignatureConfig::Slack(_) => slack::verify(keys, tolerance, req, now),
            SignatureConfig::Shopify(_) => shopify::verify(keys, req),
            SignatureConfig::Zendesk(_) => zendesk::verify(keys, tolerance, req, now),
            SignatureConfig::HubspotV3(_) => hubspot::verify(keys, tolerance, req, now),
            SignatureConfig::Hmac(h) => generic::verify(h, keys, tolerance, req, now),
            SignatureConfig::Token(t) => token::verify(keys, &t.from, req),
        }
    }
}

// ---------------------------------------------------------------------------
// Shared by the scheme files.

/// The signing keys, as raw bytes. `Debug` never shows them.
struct Keys(Vec<Vec<u8>>);

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keys({} × ***)", self.0.len())
    }
}

impl Keys {
    /// The UTF-8 bytes of each secret: what every scheme but Standard
    /// Webhooks uses as the HMAC key.
    fn from_secrets(secrets: &[Secret]) -> Result<Keys, ConfigError> {
        secrets
            .iter()
            .enumerate()
            .map(|(i, s)| match s.expose().as_bytes() {
                [] => Err(ConfigError::EmptySecret { index: i + 1 }),
                bytes => Ok(bytes.to_vec()),
            })
            .collect::<Result<_, _>>()
            .map(Keys)
    }

    /// Whether the MAC of `message` (the concatenation of its parts) under any
    /// key equals any of `candidates`. Every pair is compared in constant time
    /// and no comparison is skipped, so timing reveals neither the expected
    /// MAC nor which key matched.
    fn any_matches(&self, algorithm: Algorithm, message: &[&[u8]], candidates: &[Vec<u8>]) -> bool {
        let mut found = Choice::from(0);
        for key in &self.0 {
            let Some(tag) = mac(algorithm, key, message) else {
                continue;
            };
            for candidate in candidates {
                found |= tag.as_slice().ct_eq(candidate.as_slice());
            }
        }
        found.into()
    }
}

/// HMAC of the concatenated `parts`. `None` only if the key were refused,
/// which HMAC never does (it accepts keys of any length).
fn mac(algorithm: Algorithm, key: &[u8], parts: &[&[u8]]) -> Option<Vec<u8>> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Option<Vec<u8>> {
        let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key).ok()?;
        for part in parts {
            m.update(part);
        }
        Some(m.finalize().into_bytes().to_vec())
    }
    match algorithm {
        Algorithm::Sha256 => run::<Hmac<Sha256>>(key, parts),
        Algorithm::Sha512 => run::<Hmac<Sha512>>(key, parts),
    }
}

/// Standard base64 that accepts the padding either present or absent: senders
/// differ, and the MAC comparison is what decides, not the spelling.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decode a hex signature of a SHA-256 MAC (Stripe, GitHub, Slack).
fn decode_hex(header: &str, text: &str, algorithm: Algorithm) -> Result<Vec<u8>, SignatureError> {
    let bytes = hex::decode(text).map_err(|_| SignatureError::malformed(header, "not hex"))?;
    check_len(header, bytes, algorithm)
}

/// Decode a base64 signature of a MAC (Standard Webhooks, Shopify, Zendesk, HubSpot).
fn decode_base64(
    header: &str,
    text: &str,
    algorithm: Algorithm,
) -> Result<Vec<u8>, SignatureError> {
    use base64::Engine as _;
    let bytes = BASE64
        .decode(text)
        .map_err(|_| SignatureError::malformed(header, "not base64"))?;
    check_len(header, bytes, algorithm)
}

fn check_len(
    header: &str,
    bytes: Vec<u8>,
    algorithm: Algorithm,
) -> Result<Vec<u8>, SignatureError> {
    if bytes.len() == algorithm.tag_len() {
        Ok(bytes)
    } else {
        Err(SignatureError::malformed(
            header,
            "decodes to the wrong length for the MAC (truncated or padded?)",
        ))
    }
}

/// The value of header `name`, trimmed, or `Ok(None)` when absent or blank.
/// `Err(())` when the value is not UTF-8; the caller says which check failed.
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ()> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => match std::str::from_utf8(value.as_bytes()) {
            Ok(text) if text.trim().is_empty() => Ok(None),
            Ok(text) => Ok(Some(text.trim())),
            Err(_) => Err(()),
        },
    }
}

/// A header carrying the signature: absent is `signature_missing`, unreadable
/// is `signature_malformed`.
fn signature_header<'a>(req: &Request<'a>, name: &str) -> Result<&'a str, SignatureError> {
    match header_text(req.headers, name) {
        Ok(Some(text)) => Ok(text),
        Ok(None) => Err(SignatureError::missing(name)),
        Err(()) => Err(SignatureError::malformed(name, "not valid UTF-8")),
    }
}

/// A header carrying the timestamp: absent is `timestamp_missing`, unreadable
/// is `timestamp_malformed`.
fn timestamp_header<'a>(req: &Request<'a>, name: &str) -> Result<&'a str, SignatureError> {
    match header_text(req.headers, name) {
        Ok(Some(text)) => Ok(text),
        Ok(None) => Err(SignatureError::timestamp_missing(name)),
        Err(()) => Err(SignatureError::timestamp_malformed(name, "not valid UTF-8")),
    }
}

/// A header that is reported but not verified (a delivery id). Unreadable
/// counts as absent: it must not fail a request whose signature is good.
fn optional_header(req: &Request<'_>, name: &str) -> Option<String> {
    header_text(req.headers, name)
        .ok()
        .flatten()
        .map(str::to_owned)
}

/// Parse a decimal integer timestamp: ASCII digits only (no sign, no spaces,
/// no exponent), so what we check is exactly what was signed.
fn parse_integer(header: &str, text: &str) -> Result<i64, SignatureError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::timestamp_malformed(
            header,
            "expected an integer (unix time)",
        ));
    }
    text.parse()
        .map_err(|_| SignatureError::timestamp_malformed(header, "integer out of range"))
}

/// How far a signed timestamp may be from our clock, either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tolerance {
    /// Milliseconds, because HubSpot's timestamps are; i128 so that no
    /// arithmetic on a sender's timestamp can overflow.
    millis: i128,
}

impl Tolerance {
    fn from_config(tolerance: Option<HumanDuration>) -> Tolerance {
        let millis = match tolerance {
            Some(HumanDuration(d)) => d.as_millis().min(i128::MAX as u128) as i128,
            None => i128::from(DEFAULT_TOLERANCE_SECS) * 1000,
        };
        Tolerance { millis }
    }

    /// Accept `timestamp_ms` if it is at most the tolerance away from `now`
    /// (unix seconds) — exactly at the tolerance passes.
    fn check(self, header: &str, timestamp_ms: i128, now: i64) -> Result<(), SignatureError> {
        let age_ms = i128::from(now) * 1000 - timestamp_ms;
        if age_ms.abs() <= self.millis {
            return Ok(());
        }
        let secs = |ms: i128| u64::try_from(ms.unsigned_abs() / 1000).unwrap_or(u64::MAX);
        Err(SignatureError::TimestampStale {
            header: header.to_owned(),
            secs: secs(age_ms),
            skew: if age_ms > 0 { Skew::Past } else { Skew::Future },
            tolerance_secs: secs(self.millis),
        })
    }

    /// [`Tolerance::check`] for a timestamp in unix seconds.
    fn check_secs(self, header: &str, timestamp: i64, now: i64) -> Result<(), SignatureError> {
        self.check(header, i128::from(timestamp) * 1000, now)
    }
}

#[cfg(test)]
mod test_support {
    //! Helpers shared by the scheme tests: build a verifier from JSON config
    //! (the same serde path as YAML), build requests, and sign independently.

    use super::*;
    use http::{HeaderName, HeaderValue};

    pub const URL: &str = "https://hooks.example.com/hooks/acme?x=1";

    /// A verifier from config written as JSON, with the given secret values.
    pub fn verifier(config: serde_json::Value, secrets: &[&str]) -> Verifier {
        let config: SignatureConfig = serde_json::from_value(config).expect("test config parses");
        Verifier::new(&config, secrets.iter().map(|s| Secret::new(*s)).collect())
            .expect("test config compiles")
    }

    pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
                HeaderValue::from_str(value).expect("test header value"),
            );
        }
        map
    }

    /// Verify a POST to [`URL`], returning the check name on failure.
    pub fn run(
        v: &Verifier,
        pairs: &[(&str, &str)],
        body: &[u8],
        now: i64,
    ) -> Result<Verified, &'static str> {
        let headers = headers(pairs);
        let req = Request {
            method: "POST",
            url: URL,
            headers: &headers,
            body,
        };
        v.verify(&req, now).map_err(|e| e.check())
    }

    pub fn hmac256(key: &[u8], message: &[u8]) -> Vec<u8> {
        mac(Algorithm::Sha256, key, &[message]).expect("hmac accepts any key")
    }

    pub fn b64(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
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
        assert_eq!(
            ok,
            Verified {
                delivery_id: None,
                timestamp: None
            }
        );
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
}
