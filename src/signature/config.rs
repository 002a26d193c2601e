//! The `signature:` block of a connector's `webhook:` section, as written in
//! YAML. Each scheme is a variant that owns exactly its fields, so an option
//! of another scheme (`prefix:` on `stripe`, `tolerance:` on `github`, a
//! `secret:` on `none`) is an unknown field, reported at its own key when the
//! file loads; nothing is checked later that the type could say.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{Error as _, Unexpected};
use serde::{Deserialize, Deserializer};

use crate::duration::HumanDuration;

/// The `signature:` section of a connector's `webhook:` block.
///
/// ```yaml
/// signature:
///   scheme: github
///   secret: github_webhook_secret
/// ```
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "scheme", rename_all = "snake_case", deny_unknown_fields)]
pub enum SignatureConfig {
    /// No verification: every request passes. For senders that cannot sign;
    /// loading such a connector warns.
    None {},
    /// <https://www.standardwebhooks.com> (Svix and the many senders using it).
    StandardWebhooks(Timed),
    Stripe(Timed),
    Github(Untimed),
    Slack(Timed),
    Shopify(Untimed),
    Zendesk(Timed),
    HubspotV3(Timed),
    /// A configurable HMAC over the body (and optionally a timestamp).
    Hmac(HmacConfig),
    /// A shared token sent as is (Freshdesk automation webhooks with a
    /// custom header, Wufoo's `HandshakeKey` form field): compared with the
    /// secret, in constant time. Proves only that the sender knows the token;
    /// nothing of the body is signed.
    Token(TokenConfig),
}

/// The `token` scheme's options.
///
/// ```yaml
/// signature:
///   scheme: token
///   secret: handshake_key
///   from: { field: HandshakeKey }   # or { header: X-Switchboard-Token } or { query: token }
/// ```
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Name of the connector secret holding the token(s). Several values
    /// (during a rotation) are all accepted.
    pub secret: String,
    /// Where the sender puts the token.
    pub from: TokenSource,
}

/// Where a `token` scheme reads the token: one key, naming the header, the
/// query parameter or the body field.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenSource {
    /// A request header, e.g. `X-Switchboard-Token`.
    Header(HeaderName),
    /// A query parameter of the URL the sender posts to (`/hooks/x?token=...`).
    Query(String),
    /// A top-level field of the body: a form field
    /// (`application/x-www-form-urlencoded`) or a JSON object's string member.
    /// The field is removed from the stored event.
    Field(String),
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Header(h) => write!(f, "header {h}"),
            TokenSource::Query(q) => write!(f, "query parameter `{q}`"),
            TokenSource::Field(n) => write!(f, "body field `{n}`"),
        }
    }
}

/// The fields of a named scheme that signs a timestamp.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timed {
    /// Name of the connector secret holding the signing key(s). Several
    /// values (during a rotation) are all tried; one match is enough.
    pub secret: String,
    /// Allowed clock skew, both ways. Default 5 minutes.
    pub tolerance: Option<HumanDuration>,
}

/// The fields of a named scheme that signs no timestamp.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Untimed {
    /// Name of the connector secret holding the signing key(s).
    pub secret: String,
}

/// The generic `hmac` scheme's options.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacConfig {
    /// Name of the connector secret holding the signing key(s).
    pub secret: String,
    /// The header carrying the signature.
    pub header: HeaderName,
    /// `sha256` (default) or `sha512`.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// How the signature is written, `hex` (default) or `base64`.
    #[serde(default)]
    pub encoding: Encoding,
    /// A prefix stripped before decoding, e.g. `"sha256="`. When set (and not
    /// empty), a signature without it is rejected.
    pub prefix: Option<String>,
    /// Header carrying a unix timestamp in seconds. When set, the signed
    /// payload is `"{timestamp}.{body}"` and the timestamp must be within
    /// `tolerance`.
    pub timestamp_header: Option<HeaderName>,
    /// Header carrying the sender's delivery id, used to recognise
    /// redeliveries. Optional.
    pub id_header: Option<HeaderName>,
    /// Allowed clock skew, both ways; only with `timestamp_header`.
    pub tolerance: Option<HumanDuration>,
}

impl SignatureConfig {
    /// The scheme's name as written in YAML.
    pub fn name(&self) -> &'static str {
        match self {
            SignatureConfig::None {} => "none",
            SignatureConfig::StandardWebhooks(_) => "standard_webhooks",
            SignatureConfig::Stripe(_) => "stripe",
            SignatureConfig::Github(_) => "github",
            SignatureConfig::Slack(_) => "slack",
            SignatureConfig::Shopify(_) => "shopify",
            SignatureConfig::Zendesk(_) => "zendesk",
            SignatureConfig::HubspotV3(_) => "hubspot_v3",
            SignatureConfig::Hmac(_) => "hmac",
            SignatureConfig::Token(_) => "token",
        }
    }

    /// Name of the connector secret holding the signing keys (none for `none`).
    pub fn secret(&self) -> Option<&str> {
        match self {
            SignatureConfig::None {} => None,
            SignatureConfig::Github(u) | SignatureConfig::Shopify(u) => Some(&u.secret),
            SignatureConfig::StandardWebhooks(t)
            | SignatureConfig::Stripe(t)
            | SignatureConfig::Slack(t)
            | SignatureConfig::Zendesk(t)
            | SignatureConfig::HubspotV3(t) => Some(&t.secret),
            SignatureConfig::Hmac(h) => Some(&h.secret),
            SignatureConfig::Token(t) => Some(&t.secret),
        }
    }

    /// The fields of a named scheme that signs a timestamp.
    pub(super) fn timed(&self) -> Option<&Timed> {
        match self {
            SignatureConfig::StandardWebhooks(t)
            | SignatureConfig::Stripe(t)
            | SignatureConfig::Slack(t)
            | SignatureConfig::Zendesk(t)
            | SignatureConfig::HubspotV3(t) => Some(t),
            SignatureConfig::None {}
            | SignatureConfig::Github(_)
            | SignatureConfig::Shopify(_)
            | SignatureConfig::Hmac(_)
            | SignatureConfig::Token(_) => None,
        }
    }

    /// The configured clock skew, where the scheme has the option.
    pub(super) fn tolerance(&self) -> Option<HumanDuration> {
        match self {
            SignatureConfig::Hmac(h) => h.tolerance,
            other => other.timed().and_then(|t| t.tolerance),
        }
    }
}

/// Hash function of the generic `hmac` scheme (every named scheme is SHA-256).
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    #[default]
    Sha256,
    Sha512,
}

impl Algorithm {
    /// Length in bytes of a MAC, so a decoded signature of another length is
    /// reported as malformed rather than as a mismatch.
    pub(super) fn tag_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }
}

/// Text encoding of the generic `hmac` scheme's signature.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Hex,
    Base64,
}

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

/// A valid HTTP header name, kept as written so errors name it the way the
/// user did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderName(String);

impl HeaderName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for HeaderName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HeaderName".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "An HTTP header name.",
            "type": "string",
            "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
        })
    }
}

impl<'de> Deserialize<'de> for HeaderName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match http::HeaderName::from_bytes(text.as_bytes()) {
            Ok(_) => Ok(HeaderName(text)),
            Err(_) => Err(D::Error::invalid_value(
                Unexpected::Str(&text),
                &"a valid HTTP header name",
            )),
        }
    }
}
