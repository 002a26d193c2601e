//! Standard Webhooks (<https://www.standardwebhooks.com>), the scheme of Svix
//! and of every sender built on it.
//!
//! Headers `webhook-id`, `webhook-timestamp`, `webhook-signature` — or their
//! older `svix-` spellings. The signed content is `"{id}.{timestamp}.{body}"`;
//! the key is the base64 secret after an optional `whsec_` prefix. The
//! signature header is a space-separated list of `<version>,<base64>`; any
//! `v1` entry that matches passes, other versions (`v1a` is asymmetric) are
//! ignored so senders can add them without breaking us.

use super::{
    decode_base64, optional_header, parse_integer, signature_header, timestamp_header, Algorithm,
    ConfigError, Keys, Request, SignatureError, Tolerance, Verified, BASE64,
};
use crate::secret::Secret;

pub(super) const ID_HEADER: &str = "webhook-id";
const TIMESTAMP_HEADER: &str = "webhook-timestamp";
const SIGNATURE_HEADER: &str = "webhook-signature";
const SVIX_ID_HEADER: &str = "svix-id";
const SVIX_TIMESTAMP_HEADER: &str = "svix-timestamp";
const SVIX_SIGNATURE_HEADER: &str = "svix-signature";

/// Base64-decode each secret, with or without its `whsec_` prefix.
pub(super) fn decode_keys(secrets: &[Secret]) -> Result<Keys, ConfigError> {
    use base64::Engine as _;
    secrets
        .iter()
        .enumerate()
        .map(|(i, secret)| {
            let text = secret.expose();
            let text = text.strip_prefix("whsec_").unwrap_or(text);
            match BASE64.decode(text) {
                Ok(key) if !key.is_empty() => Ok(key),
                Ok(_) => Err(ConfigError::EmptySecret { index: i + 1 }),
                Err(_) => Err(ConfigError::BadStandardWebhooksSecret { index: i + 1 }),
            }
        })
        .collect::<Result<_, _>>()
        .map(Keys)
}

/// The `webhook-` header if present, else the `svix-` one; the name returned
/// is the one to report in errors.
fn pick<'n>(req: &Request<'_>, standard: &'n str, svix: &'n str) -> &'n str {
    if req.headers.contains_key(standard) || !req.headers.contains_key(svix) {
        standard
    } else {
        svix
    }
}

pub(super) fn verify(
    keys: &Keys,
    tolerance: Tolerance,
    req: &Request<'_>,
    now: i64,
) -> Result<Verified, SignatureError> {
    let sig_name = pick(req, SIGNATURE_HEADER, SVIX_SIGNATURE_HEADER);
    let id_name = pick(req, ID_HEADER, SVIX_ID_HEADER);
    let ts_name = pick(req, TIMESTAMP_HEADER, SVIX_TIMESTAMP_HEADER);

    let signatures = signature_header(req, sig_name)?;
    // The id is part of the signed content, so without it nothing can match.
    let id = signature_header(req, id_name)?;
    let ts_text = timestamp_header(req, ts_name)?;
    let timestamp = parse_integer(ts_name, ts_text)?;
    tolerance.check_secs(ts_name, timestamp, now)?;

    let mut candidates = Vec::new();
    let mut v1_entries = 0;
    for entry in signatures.split_ascii_whitespace() {
        if let Some(("v1", encoded)) = entry.split_once(',') {
            v1_entries += 1;
            // An undecodable entry is skipped, like another version would be;
            // only when no v1 entry decodes is the header malformed.
            if let Ok(bytes) = decode_base64(sig_name, encoded, Algorithm::Sha256) {
                candidates.push(bytes);
            }
        }
    }
    if candidates.is_empty() {
        let reason = if v1_entries == 0 {
            "no `v1,<base64>` entry"
        } else {
            "no `v1,` entry holds a base64 HMAC-SHA256"
        };
        return Err(SignatureError::malformed(sig_name, reason));
    }

    let message: [&[u8]; 5] = [id.as_bytes(), b".", ts_text.as_bytes(), b".", req.body];
    keys.verify(sig_name, Algorithm::Sha256, &message, &candidates)?;
    Ok(Verified::new(
        optional_header(req, id_name),
        Some(timestamp),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_window, b64, hmac256, run, verifier};
    use super::super::Verifier;
    use serde_json::json;

    // The Standard Webhooks specification's published test vector (also in
    // the svix libraries' tests), used verbatim.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn v(secrets: &[&str]) -> Verifier {
        verifier(
            json!({"scheme": "standard_webhooks", "secret": "sw"}),
            secrets,
        )
    }

    fn signed(ts: &str, signature: &str) -> Vec<(&'static str, String)> {
        vec![
            ("webhook-id", ID.to_owned()),
            ("webhook-timestamp", ts.to_owned()),
            ("webhook-signature", signature.to_owned()),
        ]
    }

    fn check(
        v: &Verifier,
        pairs: &[(&str, String)],
        body: &[u8],
        now: i64,
    ) -> Result<super::Verified, &'static str> {
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, s)| (*n, s.as_str())).collect();
        run(v, &pairs, body, now)
    }

    /// A valid signature for `ts`, made independently of the code under test.
    fn sign_at(ts: i64) -> String {
        use base64::Engine as _;
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .expect("vector key");
        let mut msg = format!("{ID}.{ts}.").into_bytes();
        msg.extend_from_slice(BODY);
        format!("v1,{}", b64(&hmac256(&key, &msg)))
    }

    #[test]
    fn published_vector_passes() {
        let ok = check(&v(&[SECRET]), &signed("1614265330", SIGNATURE), BODY, TS).expect("valid");
        assert_eq!(ok.delivery_id.as_deref(), Some(ID));
        assert_eq!(ok.timestamp, Some(TS));
        assert_eq!(v(&[SECRET]).delivery_id_header(), Some("webhook-id"));
    }

    #[test]
    fn secret_without_whsec_prefix_and_svix_headers_pass() {
        let bare = v(&["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]);
        let svix: Vec<_> = signed("1614265330", SIGNATURE)
            .into_iter()
            .map(|(n, s)| (n.replacen("webhook", "svix", 1), s))
            .collect();
        let svix: Vec<(&str, String)> = svix.iter().map(|(n, s)| (n.as_str(), s.clone())).collect();
        let ok = check(&bare, &svix, BODY, TS).expect("svix- headers");
        assert_eq!(ok.delivery_id.as_deref(), Some(ID));
    }

    #[test]
    fn wrong_secret_body_or_id_mismatch() {
        let other = v(&["whsec_c2VjcmV0LW9mLWEtcm90YXRlZC1lbmRwb2ludA=="]);
        assert_eq!(
            check(&other, &signed("1614265330", SIGNATURE), BODY, TS),
            Err("signature_mismatch")
        );
        let body = br#"{"test": 2432232315}"#;
        assert_eq!(
            check(&v(&[SECRET]), &signed("1614265330", SIGNATURE), body, TS),
            Err("signature_mismatch")
        );
        let mut h = signed("1614265330", SIGNATURE);
        h[0].1 = "msg_other".into();
        assert_eq!(
            check(&v(&[SECRET]), &h, BODY, TS),
            Err("signature_mismatch")
        );
    }

    #[test]
    fn missing_headers() {
        let v = v(&[SECRET]);
        let mut h = signed("1614265330", SIGNATURE);
        h.remove(2);
        assert_eq!(check(&v, &h, BODY, TS), Err("signature_missing"));
        let mut h = signed("1614265330", SIGNATURE);
        h.remove(0);
        assert_eq!(check(&v, &h, BODY, TS), Err("signature_missing"));
        let mut h = signed("1614265330", SIGNATURE);
        h.remove(1);
        assert_eq!(check(&v, &h, BODY, TS), Err("timestamp_missing"));
    }

    #[test]
    fn malformed_signatures_are_rejected() {
        let v = v(&[SECRET]);
        let truncated = &SIGNATURE[..SIGNATURE.len() - 4];
        for bad in [
            truncated,
            "v1,",
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "garbage",
            "v1,***",
        ] {
            assert_eq!(
                check(&v, &signed("1614265330", bad), BODY, TS),
                Err("signature_malformed"),
                "{bad}"
            );
        }
    }

    #[test]
    fn any_v1_entry_may_match_and_other_versions_are_ignored() {
        let v = v(&[SECRET]);
        let wrong = format!("v1,{}", b64(&[7u8; 32]));
        let list = format!("v1a,AAAA {wrong} {SIGNATURE} v2,xyz");
        assert!(check(&v, &signed("1614265330", &list), BODY, TS).is_ok());
        let only_wrong = format!("v1a,AAAA {wrong}");
        assert_eq!(
            check(&v, &signed("1614265330", &only_wrong), BODY, TS),
            Err("signature_mismatch")
        );
    }

    #[test]
    fn timestamp_window_both_ways() {
        let v = v(&[SECRET]);
        let vector = signed("1614265330", SIGNATURE);
        assert_window(300, |age| check(&v, &vector, BODY, TS + age));
        // Fresh signatures made for the edges behave the same.
        let now = 1_700_000_000;
        assert_window(300, |age| {
            let ts = now - age;
            check(&v, &signed(&ts.to_string(), &sign_at(ts)), BODY, now)
        });
    }

    #[test]
    fn non_numeric_timestamp_is_malformed() {
        let v = v(&[SECRET]);
        for bad in [
            "soon",
            "1614265330.0",
            "-1614265330",
            "+1614265330",
            "99999999999999999999999",
        ] {
            assert_eq!(
                check(&v, &signed(bad, SIGNATURE), BODY, TS),
                Err("timestamp_malformed"),
                "{bad}"
            );
        }
    }

    #[test]
    fn rotation_second_secret_matches() {
        let v = v(&["whsec_c2VjcmV0LW9mLWEtcm90YXRlZC1lbmRwb2ludA==", SECRET]);
        assert!(check(&v, &signed("1614265330", SIGNATURE), BODY, TS).is_ok());
    }
}
