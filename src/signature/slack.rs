//! Slack: `X-Slack-Signature: v0=<hex>` over `"v0:{timestamp}:{body}"`, with
//! the timestamp from `X-Slack-Request-Timestamp` (unix seconds).
//!
//! Slack has no delivery-id header; retries carry `X-Slack-Retry-Num`, which
//! is not an id and is left to the ingress.

use super::{
    decode_hex, parse_integer, signature_header, timestamp_header, Algorithm, Keys, Request,
    SignatureError, Tolerance, Verified,
};

const HEADER: &str = "X-Slack-Signature";
const TIMESTAMP_HEADER: &str = "X-Slack-Request-Timestamp";

pub(super) fn verify(
    keys: &Keys,
    tolerance: Tolerance,
    req: &Request<'_>,
    now: i64,
) -> Result<Verified, SignatureError> {
    let value = signature_header(req, HEADER)?;
    let ts_text = timestamp_header(req, TIMESTAMP_HEADER)?;
    let timestamp = parse_integer(TIMESTAMP_HEADER, ts_text)?;
    tolerance.check_secs(TIMESTAMP_HEADER, timestamp, now)?;

    let hex = value
        .strip_prefix("v0=")
        .ok_or_else(|| SignatureError::malformed(HEADER, "expected `v0=<hex>`"))?;
    let candidate = decode_hex(HEADER, hex, Algorithm::Sha256)?;
    let message: [&[u8]; 4] = [b"v0:", ts_text.as_bytes(), b":", req.body];
    keys.verify(HEADER, Algorithm::Sha256, &message, &[candidate])?;
    Ok(Verified::new(None, Some(timestamp)))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_window, hmac256, run, verifier};
    use super::super::{Verified, Verifier};
    use serde_json::json;

    // Slack's documented example ("Verifying requests from Slack"), verbatim.
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const TS: i64 = 1531420618;
    const BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    fn v(secrets: &[&str]) -> Verifier {
        verifier(json!({"scheme": "slack", "secret": "slack"}), secrets)
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
                ("X-Slack-Signature", sig),
                ("X-Slack-Request-Timestamp", ts),
            ],
            body,
            now,
        )
    }

    fn sign_at(ts: i64) -> String {
        let mut msg = format!("v0:{ts}:").into_bytes();
        msg.extend_from_slice(BODY);
        format!("v0={}", hex::encode(hmac256(SECRET.as_bytes(), &msg)))
    }

    #[test]
    fn documented_example_passes() {
        let ok = check(&v(&[SECRET]), SIG, "1531420618", BODY, TS).expect("valid");
        assert_eq!(ok, Verified::new(None, Some(TS)));
        assert_eq!(v(&[SECRET]).delivery_id_header(), None);
    }

    #[test]
    fn wrong_secret_and_changed_body_mismatch() {
        assert_eq!(
            check(
                &v(&["8f742231b10e8888abcd99yyyzzz85a6"]),
                SIG,
                "1531420618",
                BODY,
                TS
            ),
            Err("signature_mismatch")
        );
        let mut body = BODY.to_vec();
        body[0] = b'T';
        assert_eq!(
            check(&v(&[SECRET]), SIG, "1531420618", &body, TS),
            Err("signature_mismatch")
        );
        // The timestamp is signed: a different one within the window fails.
        assert_eq!(
            check(&v(&[SECRET]), SIG, "1531420619", BODY, TS),
            Err("signature_mismatch")
        );
    }

    #[test]
    fn missing_headers() {
        let v = v(&[SECRET]);
        assert_eq!(
            run(&v, &[("X-Slack-Request-Timestamp", "1531420618")], BODY, TS),
            Err("signature_missing")
        );
        assert_eq!(
            run(&v, &[("X-Slack-Signature", SIG)], BODY, TS),
            Err("timestamp_missing")
        );
    }

    #[test]
    fn malformed_signatures_are_rejected() {
        let v = v(&[SECRET]);
        let v1 = SIG.replacen("v0=", "v1=", 1);
        for bad in [
            &SIG[..SIG.len() - 1],
            &SIG[..SIG.len() - 2],
            "v0=",
            v1.as_str(),
            &SIG[3..],
        ] {
            assert_eq!(
                check(&v, bad, "1531420618", BODY, TS),
                Err("signature_malformed"),
                "{bad}"
            );
        }
    }

    #[test]
    fn timestamp_window_both_ways() {
        let v = v(&[SECRET]);
        let now = 1_700_000_000;
        assert_window(300, |age| {
            let ts = now - age;
            check(&v, &sign_at(ts), &ts.to_string(), BODY, now)
        });
        // The documented example is years old: stale today.
        assert_eq!(
            check(&v, SIG, "1531420618", BODY, now),
            Err("timestamp_stale")
        );
    }

    #[test]
    fn non_numeric_timestamp_is_malformed() {
        for ts in ["yesterday", "1531420618.5", "0x5b47"] {
            assert_eq!(
                check(&v(&[SECRET]), SIG, ts, BODY, TS),
                Err("timestamp_malformed"),
                "{ts}"
            );
        }
    }

    #[test]
    fn rotation_second_secret_matches() {
        assert!(check(&v(&["old", SECRET]), SIG, "1531420618", BODY, TS).is_ok());
    }
}
