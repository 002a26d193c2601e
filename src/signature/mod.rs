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
//! Layout: `config.rs`, the `signature:` block as serde reads it and its
//! load-time errors; `verifier.rs`, the compiled [`Verifier`]; one file per
//! scheme family, each with one `verify` function over the helpers of
//! `primitives.rs` (keys, HMAC comparison, header reading, timestamp
//! window); here, what a verification takes and answers.
//!
//! Invariants — what this module must never do:
//! - compare signatures with `==`: every comparison goes through
//!   [`subtle::ConstantTimeEq`] (`Keys::verify`);
//! - put a secret, a key or the *expected* signature into an error, a log or a
//!   `Debug` output (`Keys` prints `***`, errors carry only header names and
//!   static reasons);
//! - panic on anything the sender controls (headers, body, URL, method);
//! - do I/O: the caller resolves secret names to values and passes the clock.

mod config;
mod generic;
mod github;
mod hubspot;
mod primitives;
mod shopify;
mod slack;
mod standard;
mod stripe;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
mod token;
mod verifier;
mod zendesk;

use std::fmt;

use http::HeaderMap;

pub use config::{
    Algorithm, ConfigError, Encoding, HeaderName, HmacConfig, SignatureConfig, Timed, TokenConfig,
    TokenSource, Untimed,
};
use primitives::{
    decode_base64, decode_hex, header_text, optional_header, parse_integer, signature_header,
    timestamp_header, Keys, Tolerance, BASE64,
};
pub use verifier::Verifier;
/// Sign a body as Zendesk does (`switchboard demo send`).
pub use zendesk::sign as sign_zendesk;

/// Allowed clock skew when `tolerance:` is not given: the 5 minutes that
/// Stripe, Slack, Svix and HubSpot all recommend.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

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

impl Verified {
    fn new(delivery_id: Option<String>, timestamp: Option<i64>) -> Verified {
        Verified {
            delivery_id,
            timestamp,
        }
    }
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
