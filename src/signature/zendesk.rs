//! Zendesk: `X-Zendesk-Webhook-Signature: <base64>` of
//! HMAC-SHA256(timestamp + body), where timestamp is the raw value of
//! `X-Zendesk-Webhook-Signature-Timestamp`, an RFC 3339 time such as
//! `2024-05-01T10:00:00Z`.
//!
//! The raw header text is what is signed; it is parsed only for the
//! tolerance check. Delivery id: `X-Zendesk-Webhook-Invocation-Id`.

use std::time::{Duration, UNIX_EPOCH};

use super::{
    decode_base64, optional_header, signature_header, timestamp_header, Algorithm, Keys, Request,
    SignatureError, Tolerance, Verified,
};

const HEADER: &str = "X-Zendesk-Webhook-Signature";
const TIMESTAMP_HEADER: &str = "X-Zendesk-Webhook-Signature-Timestamp";
pub(super) const INVOCATION_ID_HEADER: &str = "X-Zendesk-Webhook-Invocation-Id";

/// Milliseconds since the epoch of an RFC 3339 UTC time (`T` or space, `Z`
/// optional, any fractional digits — humantime's "weak" form).
fn parse_rfc3339_millis(text: &str) -> Result<i128, SignatureError> {
    let malformed = || {
        SignatureError::timestamp_malformed(
            TIMESTAMP_HEADER,
            "expected an RFC 3339 UTC time such as 2024-05-01T10:00:00Z",
        )
    };
    let time = humantime::parse_rfc3339_weak(text).map_err(|_| malformed())?;
    let since_epoch: Duration = time.duration_since(UNIX_EPOCH).map_err(|_| malformed())?;
    i128::try_from(since_epoch.as_millis()).map_err(|_| malformed())
}

pub(super) fn verify(
    keys: &Keys,
    tolerance: Tolerance,
    req: &Request<'_>,
    now: i64,
) -> Result<Verified, SignatureError> {
    let value = signature_header(req, HEADER)?;
    let ts_text = timestamp_header(req, TIMESTAMP_HEADER)?;
    let timestamp_ms = parse_rfc3339_millis(ts_text)?;
    tolerance.check(TIMESTAMP_HEADER, timestamp_ms, now)?;

    let candidate = decode_base64(HEADER, value, Algorithm::Sha256)?;
    let message: [&[u8]; 2] = [ts_text.as_bytes(), req.body];
    keys.verify(HEADER, Algorithm::Sha256, &message, &[candidate])?;
    Ok(Verified {
        delivery_id: optional_header(req, INVOCATION_ID_HEADER),
        // Within the tolerance of an i64 `now`, so it fits an i64.
        timestamp: i64::try_from(timestamp_ms.div_euclid(1000)).ok(),
    })
}

/// The headers Zendesk sends with `body`: signed with `secret` at
/// `timestamp` (RFC 3339 text, signed as written), with `invocation_id` as
/// the delivery id. For `switchboard demo send`; [`verify`] accepts them.
pub fn sign(
    secret: &str,
    timestamp: &str,
    body: &[u8],
    invocation_id: &str,
) -> Vec<(&'static str, String)> {
    use base64::Engine;
    let tag = super::primitives::mac(
        Algorithm::Sha256,
        secret.as_bytes(),
        &[timestamp.as_bytes(), body],
    )
    .unwrap_or_default();
    let signature = base64::engine::general_purpose::STANDARD.encode(tag);
    vec![
        (HEADER, signature),
        (TIMESTAMP_HEADER, timestamp.to_string()),
        (INVOCATION_ID_HEADER, invocation_id.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_window, b64, hmac256, run, verifier};
    use super::super::{Verified, Verifier};
    use serde_json::json;

    // Zendesk publishes no fixed vector; computed independently with python3:
    // base64.b64encode(hmac.new(b"dGhpc19zZWNyZXRfaXNfZm9yX3Rlc3Rpbmdfb25seQ==",
    //   b'2024-05-01T10:00:00Z{"ticket_id":42}', hashlib.sha256).digest())
    // (the key is Zendesk's documented test-webhook secret, used as text).
    const SECRET: &str = "dGhpc19zZWNyZXRfaXNfZm9yX3Rlc3Rpbmdfb25seQ==";
    const TS_TEXT: &str = "2024-05-01T10:00:00Z";
    const TS: i64 = 1_714_557_600;
    const BODY: &[u8] = br#"{"ticket_id":42}"#;
    const SIG: &str = "o209D+LazA2FVRyaU9iADP9t3APdT3UKPD/nMg9tEQk=";
    const ID: &str = "01HX3Q1ZB6PZ6W2Y8C6K0J5T9R";

    fn v(secrets: &[&str]) -> Verifier {
        verifier(json!({"scheme": "zendesk", "secret": "zd"}), secrets)
    }

    fn check(
        v: &Verifier,
        sig: &str,
        ts: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, &'static str> {
        run(
            v,
            &[
                ("X-Zendesk-Webhook-Signature", sig),
                ("X-Zendesk-Webhook-Signature-Timestamp", ts),
                ("X-Zendesk-Webhook-Invocation-Id", ID),
            ],
            body,
            now,
        )
    }

    fn sign(ts_text: &str) -> String {
        let mut msg = ts_text.as_bytes().to_vec();
        msg.extend_from_slice(BODY);
        b64(&hmac256(SECRET.as_bytes(), &msg))
    }

    #[test]
    fn what_sign_makes_verifies() {
        let headers = super::sign(SECRET, TS_TEXT, BODY, ID);
        assert_eq!(headers[0].1, SIG);
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let ok = run(&v(&[SECRET]), &h, BODY, TS).expect("valid");
        assert_eq!(ok.delivery_id.as_deref(), Some(ID));
    }

    #[test]
    fn valid_signature_passes() {
        let ok = check(&v(&[SECRET]), SIG, TS_TEXT, BODY, TS).expect("valid");
        assert_eq!(ok, Verified::new(Some(ID.into()), Some(TS)));
        assert_eq!(
            v(&[SECRET]).delivery_id_header(),
            Some("X-Zendesk-Webhook-Invocation-Id")
        );
    }

    #[test]
    fn wrong_secret_and_changed_body_mismatch() {
        assert_eq!(
            check(&v(&["other"]), SIG, TS_TEXT, BODY, TS),
            Err("signature_mismatch")
        );
        assert_eq!(
            check(&v(&[SECRET]), SIG, TS_TEXT, br#"{"ticket_id":43}"#, TS),
            Err("signature_mismatch")
        );
        // Same instant, different spelling: the raw text is what is signed.
        assert_eq!(
            check(&v(&[SECRET]), SIG, "2024-05-01T10:00:00.000Z", BODY, TS),
            Err("signature_mismatch")
        );
    }

    #[test]
    fn missing_headers() {
        let v = v(&[SECRET]);
        assert_eq!(
            run(
                &v,
                &[("X-Zendesk-Webhook-Signature-Timestamp", TS_TEXT)],
                BODY,
                TS
            ),
            Err("signature_missing")
        );
        assert_eq!(
            run(&v, &[("X-Zendesk-Webhook-Signature", SIG)], BODY, TS),
            Err("timestamp_missing")
        );
    }

    #[test]
    fn malformed_signatures_are_rejected() {
        let v = v(&[SECRET]);
        for bad in [
            &SIG[..SIG.len() - 4],
            &SIG[..10],
            "v1=o209D+LazA2FVRyaU9iADP9t3APdT3UKPD/nMg9tEQk=",
        ] {
            assert_eq!(
                check(&v, bad, TS_TEXT, BODY, TS),
                Err("signature_malformed"),
                "{bad}"
            );
        }
    }

    #[test]
    fn timestamp_window_both_ways() {
        let v = v(&[SECRET]);
        // 10:00:00Z is 300 s before 10:05:00Z and 301 s before 10:05:01Z.
        assert_window(300, |age| check(&v, SIG, TS_TEXT, BODY, TS + age));
        // Sub-second precision counts: 300.5 s old is beyond 300 s.
        let ts = "2024-05-01T09:55:00.500Z";
        assert!(check(&v, &sign(ts), ts, BODY, TS + 1).is_err());
        assert!(check(&v, &sign(ts), ts, BODY, TS).is_ok());
    }

    #[test]
    fn unparseable_timestamp_is_malformed() {
        for ts in [
            "1714557600",
            "2024-05-01",
            "2024-13-01T10:00:00Z",
            "1960-01-01T00:00:00Z",
            "yesterday",
        ] {
            assert_eq!(
                check(&v(&[SECRET]), &sign(ts), ts, BODY, TS),
                Err("timestamp_malformed"),
                "{ts}"
            );
        }
    }

    #[test]
    fn rotation_second_secret_matches() {
        assert!(check(&v(&["old", SECRET]), SIG, TS_TEXT, BODY, TS).is_ok());
    }
}
