//! Stripe: `Stripe-Signature: t=<unix secs>,v1=<hex>[,v1=<hex>…][,v0=…]`.
//!
//! The signed payload is `"{t}.{body}"`, HMAC-SHA256, hex. Stripe sends
//! several `v1` entries while an endpoint secret is being rolled; any match
//! passes. `v0` is Stripe's test-mode scheme and is ignored, as Stripe's own
//! libraries do. Stripe has no delivery-id header (the event id is in the
//! body).

use super::{
    decode_hex, parse_integer, signature_header, Algorithm, Keys, Request, SignatureError,
    Tolerance, Verified,
};

const HEADER: &str = "Stripe-Signature";
/// How errors about the timestamp name it: it is a field, not a header.
const TIMESTAMP_FIELD: &str = "Stripe-Signature t=";

pub(super) fn verify(
    keys: &Keys,
    tolerance: Tolerance,
    req: &Request<'_>,
    now: i64,
) -> Result<Verified, SignatureError> {
    let header = signature_header(req, HEADER)?;

    let mut t = None;
    let mut v1 = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else {
            return Err(SignatureError::malformed(
                HEADER,
                "expected `key=value` items",
            ));
        };
        match key {
            "t" if t.is_some() => {
                return Err(SignatureError::malformed(HEADER, "more than one `t=`"));
            }
            "t" => t = Some(value),
            "v1" => v1.push(value),
            _ => {} // v0 and future schemes
        }
    }
    let t_text = t.ok_or_else(|| SignatureError::timestamp_missing(TIMESTAMP_FIELD))?;
    let timestamp = parse_integer(TIMESTAMP_FIELD, t_text)?;
    tolerance.check_secs(TIMESTAMP_FIELD, timestamp, now)?;

    // Skip undecodable entries; only when none decodes is the header malformed.
    let candidates: Vec<Vec<u8>> = v1
        .iter()
        .filter_map(|s| decode_hex(HEADER, s, Algorithm::Sha256).ok())
        .collect();
    if candidates.is_empty() {
        let reason = if v1.is_empty() {
            "no `v1=` signature"
        } else {
            "no `v1=` entry holds a hex HMAC-SHA256"
        };
        return Err(SignatureError::malformed(HEADER, reason));
    }
    let message: [&[u8]; 3] = [t_text.as_bytes(), b".", req.body];
    keys.verify(HEADER, Algorithm::Sha256, &message, &candidates)?;
    Ok(Verified::new(None, Some(timestamp)))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_window, hmac256, run, verifier};
    use super::super::{Verified, Verifier};
    use serde_json::json;

    // Stripe publishes no fixed vector; this one was computed independently
    // with python3: hmac.new(b"whsec_test_secret",
    //   b'1700000000.{"id":"evt_1","object":"event"}', hashlib.sha256).hexdigest()
    const SECRET: &str = "whsec_test_secret";
    const TS: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","object":"event"}"#;
    const SIG: &str = "0c8670ed117751cc551a20e35839447075c42800ea3cf3e8a2fbda99cd1e6edd";

    fn v(secrets: &[&str]) -> Verifier {
        verifier(json!({"scheme": "stripe", "secret": "stripe"}), secrets)
    }

    fn check(v: &Verifier, header: &str, body: &[u8], now: i64) -> Result<Verified, &'static str> {
        run(v, &[("Stripe-Signature", header)], body, now)
    }

    fn sign_at(ts: i64) -> String {
        let mut msg = format!("{ts}.").into_bytes();
        msg.extend_from_slice(BODY);
        format!(
            "t={ts},v1={}",
            hex::encode(hmac256(SECRET.as_bytes(), &msg))
        )
    }

    #[test]
    fn valid_signature_passes() {
        let ok = check(&v(&[SECRET]), &format!("t={TS},v1={SIG}"), BODY, TS).expect("valid");
        assert_eq!(ok, Verified::new(None, Some(TS)));
        assert_eq!(v(&[SECRET]).delivery_id_header(), None);
        // Upper-case hex and spaces after commas are tolerated.
        let loose = format!("t={TS}, v1={}, v0=abc", SIG.to_uppercase());
        assert!(check(&v(&[SECRET]), &loose, BODY, TS).is_ok());
    }

    #[test]
    fn wrong_secret_and_changed_body_mismatch() {
        let h = format!("t={TS},v1={SIG}");
        assert_eq!(
            check(&v(&["whsec_other"]), &h, BODY, TS),
            Err("signature_mismatch")
        );
        let body = br#"{"id":"evt_2","object":"event"}"#;
        assert_eq!(
            check(&v(&[SECRET]), &h, body, TS),
            Err("signature_mismatch")
        );
        // The timestamp is signed too.
        let h = format!("t={},v1={SIG}", TS + 1);
        assert_eq!(
            check(&v(&[SECRET]), &h, BODY, TS),
            Err("signature_mismatch")
        );
    }

    #[test]
    fn missing_header_or_timestamp() {
        assert_eq!(run(&v(&[SECRET]), &[], BODY, TS), Err("signature_missing"));
        assert_eq!(
            check(&v(&[SECRET]), &format!("v1={SIG}"), BODY, TS),
            Err("timestamp_missing")
        );
    }

    #[test]
    fn malformed_signatures_are_rejected() {
        let v = v(&[SECRET]);
        for bad in [
            format!("t={TS},v1={}", &SIG[..63]),
            format!("t={TS},v1={}", &SIG[..62]),
            format!("t={TS},v1="),
            format!("t={TS},v0={SIG}"),
            format!("t={TS},v2={SIG}"),
            format!("t={TS},t={TS},v1={SIG}"),
            "garbage".to_owned(),
        ] {
            assert_eq!(
                check(&v, &bad, BODY, TS),
                Err("signature_malformed"),
                "{bad}"
            );
        }
    }

    #[test]
    fn any_v1_entry_may_match() {
        let other = "00".repeat(32);
        let h = format!("t={TS},v1={other},v1={SIG}");
        assert!(check(&v(&[SECRET]), &h, BODY, TS).is_ok());
        let h = format!("t={TS},v1={other},v0={SIG}");
        assert_eq!(
            check(&v(&[SECRET]), &h, BODY, TS),
            Err("signature_mismatch")
        );
    }

    #[test]
    fn timestamp_window_both_ways() {
        let v = v(&[SECRET]);
        assert_window(300, |age| check(&v, &sign_at(TS - age), BODY, TS));
        let custom = verifier(
            json!({"scheme": "stripe", "secret": "s", "tolerance": "10s"}),
            &[SECRET],
        );
        assert_window(10, |age| check(&custom, &sign_at(TS - age), BODY, TS));
    }

    #[test]
    fn non_numeric_timestamp_is_malformed() {
        for t in ["abc", "", "1.5", "-5"] {
            let h = format!("t={t},v1={SIG}");
            assert_eq!(
                check(&v(&[SECRET]), &h, BODY, TS),
                Err("timestamp_malformed"),
                "{t}"
            );
        }
    }

    #[test]
    fn rotation_second_secret_matches() {
        let h = format!("t={TS},v1={SIG}");
        assert!(check(&v(&["whsec_old", SECRET]), &h, BODY, TS).is_ok());
    }
}
