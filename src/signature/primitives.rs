//! What the scheme files share: the keys and their constant-time
//! comparison, MACs, signature decoding, header reading and the timestamp
//! window. Nothing here knows a scheme.

use std::fmt;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Sha256, Sha512};
use subtle::{Choice, ConstantTimeEq};

use super::{Algorithm, ConfigError, Request, SignatureError, Skew, DEFAULT_TOLERANCE_SECS};
use crate::duration::HumanDuration;
use crate::secret::Secret;

/// The signing keys, as raw bytes. `Debug` never shows them.
pub(super) struct Keys(pub(super) Vec<Vec<u8>>);

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keys({} × ***)", self.0.len())
    }
}

impl Keys {
    /// The UTF-8 bytes of each secret: what every scheme but Standard
    /// Webhooks uses as the HMAC key.
    pub(super) fn from_secrets(secrets: &[Secret]) -> Result<Keys, ConfigError> {
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

    /// `Ok` when the MAC of `message` (the concatenation of its parts) under
    /// any key equals any of `candidates`, else a mismatch of `header`. Every
    /// pair is compared in constant time and no comparison is skipped, so
    /// timing reveals neither the expected MAC nor which key matched.
    pub(super) fn verify(
        &self,
        header: &str,
        algorithm: Algorithm,
        message: &[&[u8]],
        candidates: &[Vec<u8>],
    ) -> Result<(), SignatureError> {
        let mut found = Choice::from(0);
        for key in &self.0 {
            let Some(tag) = mac(algorithm, key, message) else {
                continue;
            };
            for candidate in candidates {
                found |= tag.as_slice().ct_eq(candidate.as_slice());
            }
        }
        match bool::from(found) {
            true => Ok(()),
            false => Err(SignatureError::mismatch(header)),
        }
    }
}

/// HMAC of the concatenated `parts`. `None` only if the key were refused,
/// which HMAC never does (it accepts keys of any length).
pub(super) fn mac(algorithm: Algorithm, key: &[u8], parts: &[&[u8]]) -> Option<Vec<u8>> {
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
pub(super) const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decode a hex signature of a SHA-256 MAC (Stripe, GitHub, Slack).
pub(super) fn decode_hex(
    header: &str,
    text: &str,
    algorithm: Algorithm,
) -> Result<Vec<u8>, SignatureError> {
    let bytes = hex::decode(text).map_err(|_| SignatureError::malformed(header, "not hex"))?;
    check_len(header, bytes, algorithm)
}

/// Decode a base64 signature of a MAC (Standard Webhooks, Shopify, Zendesk, HubSpot).
pub(super) fn decode_base64(
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
pub(super) fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ()> {
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
pub(super) fn signature_header<'a>(
    req: &Request<'a>,
    name: &str,
) -> Result<&'a str, SignatureError> {
    match header_text(req.headers, name) {
        Ok(Some(text)) => Ok(text),
        Ok(None) => Err(SignatureError::missing(name)),
        Err(()) => Err(SignatureError::malformed(name, "not valid UTF-8")),
    }
}

/// A header carrying the timestamp: absent is `timestamp_missing`, unreadable
/// is `timestamp_malformed`.
pub(super) fn timestamp_header<'a>(
    req: &Request<'a>,
    name: &str,
) -> Result<&'a str, SignatureError> {
    match header_text(req.headers, name) {
        Ok(Some(text)) => Ok(text),
        Ok(None) => Err(SignatureError::timestamp_missing(name)),
        Err(()) => Err(SignatureError::timestamp_malformed(name, "not valid UTF-8")),
    }
}

/// A header that is reported but not verified (a delivery id). Unreadable
/// counts as absent: it must not fail a request whose signature is good.
pub(super) fn optional_header(req: &Request<'_>, name: &str) -> Option<String> {
    header_text(req.headers, name)
        .ok()
        .flatten()
        .map(str::to_owned)
}

/// Parse a decimal integer timestamp: ASCII digits only (no sign, no spaces,
/// no exponent), so what we check is exactly what was signed.
pub(super) fn parse_integer(header: &str, text: &str) -> Result<i64, SignatureError> {
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
pub(super) struct Tolerance {
    /// Milliseconds, because HubSpot's timestamps are; i128 so that no
    /// arithmetic on a sender's timestamp can overflow.
    pub(super) millis: i128,
}

impl Tolerance {
    pub(super) fn from_config(tolerance: Option<HumanDuration>) -> Tolerance {
        let millis = match tolerance {
            Some(HumanDuration(d)) => d.as_millis().min(i128::MAX as u128) as i128,
            None => i128::from(DEFAULT_TOLERANCE_SECS) * 1000,
        };
        Tolerance { millis }
    }

    /// Accept `timestamp_ms` if it is at most the tolerance away from `now`
    /// (unix seconds) — exactly at the tolerance passes.
    pub(super) fn check(
        self,
        header: &str,
        timestamp_ms: i128,
        now: i64,
    ) -> Result<(), SignatureError> {
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
    pub(super) fn check_secs(
        self,
        header: &str,
        timestamp: i64,
        now: i64,
    ) -> Result<(), SignatureError> {
        self.check(header, i128::from(timestamp) * 1000, now)
    }
}
