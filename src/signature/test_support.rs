//! Helpers shared by the scheme tests: build a verifier from JSON config
//! (the same serde path as YAML), build requests, and sign independently.

use super::primitives::mac;
use super::*;
use crate::secret::Secret;
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

/// `at(age)` verifies a request whose signed timestamp is `age` seconds
/// old (negative: ahead of the clock): it passes up to `tolerance` either
/// way, and one second beyond is stale.
#[track_caller]
pub fn assert_window(tolerance: i64, at: impl Fn(i64) -> Result<Verified, &'static str>) {
    for age in [-tolerance - 1, -tolerance, tolerance, tolerance + 1] {
        let want = match age.abs() <= tolerance {
            true => Ok(()),
            false => Err("timestamp_stale"),
        };
        assert_eq!(at(age).map(|_| ()), want, "signed {age} s ago");
    }
}

pub fn hmac256(key: &[u8], message: &[u8]) -> Vec<u8> {
    mac(Algorithm::Sha256, key, &[message]).expect("hmac accepts any key")
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
