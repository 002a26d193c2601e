//! HubSpot v3: `X-HubSpot-Signature-v3: <base64>` of
//! HMAC-SHA256(method + uri + body + timestamp), with the timestamp from
//! `X-HubSpot-Request-Timestamp` in **milliseconds**.
//!
//! This is the only scheme that signs the URL, so it depends on the ingress
//! passing the URL exactly as HubSpot addressed it (public scheme and host,
//! path and query in their original order). HubSpot documents that a fixed
//! set of percent-escapes is decoded in the URI before signing; we decode the
//! same set and nothing else. HubSpot only asks to reject timestamps older
//! than 5 minutes; we apply the tolerance both ways like every other scheme,
//! since a timestamp far in the future is just as unlikely to be genuine.
//! HubSpot sends no delivery-id header (event ids are in the body).

use super::{
    decode_base64, parse_integer, signature_header, timestamp_header, Algorithm, Keys, Request,
    SignatureError, Tolerance, Verified,
};

const HEADER: &str = "X-HubSpot-Signature-v3";
const TIMESTAMP_HEADER: &str = "X-HubSpot-Request-Timestamp";

/// The escapes HubSpot decodes before signing, from its "Validate the v3
/// request signature" table. Any other escape stays as sent.
fn decoded(byte: u8) -> Option<char> {
    Some(match byte {
        0x3A => ':',
        0x2F => '/',
        0x3F => '?',
        0x40 => '@',
        0x21 => '!',
        0x24 => '$',
        0x27 => '\'',
        0x28 => '(',
        0x29 => ')',
        0x2A => '*',
        0x2C => ',',
        0x3B => ';',
        _ => return None,
    })
}

/// `uri` with HubSpot's escapes decoded (hex digits in either case). None of
/// the decoded characters is `%` or a hex digit, so one pass is the same as
/// HubSpot's repeated replacements.
fn decode_uri(uri: &str) -> String {
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let escape = rest
            .get(at + 1..at + 3)
            .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()));
        match escape
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .and_then(decoded)
        {
            Some(c) => {
                out.push(c);
                rest = &rest[at + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

pub(super) fn verify(
    keys: &Keys,
    tolerance: Tolerance,
    req: &Request<'_>,
    now: i64,
) -> Result<Verified, SignatureError> {
    let value = signature_header(req, HEADER)?;
    let ts_text = timestamp_header(req, TIMESTAMP_HEADER)?;
    let timestamp_ms = parse_integer(TIMESTAMP_HEADER, ts_text)?;
    tolerance.check(TIMESTAMP_HEADER, i128::from(timestamp_ms), now)?;

    let candidate = decode_base64(HEADER, value, Algorithm::Sha256)?;
    let uri = decode_uri(req.url);
    let message: [&[u8]; 4] = [
        req.method.as_bytes(),
        uri.as_bytes(),
        req.body,
        ts_text.as_bytes(),
    ];
    keys.verify(HEADER, Algorithm::Sha256, &message, &[candidate])?;
    Ok(Verified::new(None, Some(timestamp_ms.div_euclid(1000))))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_window, b64, headers, hmac256, verifier};
    use super::super::{Request, Verified, Verifier};
    use super::decode_uri;
    use serde_json::json;

    // HubSpot publishes no v3 vector; computed independently with python3:
    // base64.b64encode(hmac.new(b"hubspot-client-secret",
    //   b'POSThttps://hooks.example.com/hooks/hubspot?portal=62515&q=a:b[{"eventId":1}]1700000000000',
    //   hashlib.sha256).digest())
    // The request below sends the URL with `%3A`, which HubSpot decodes before signing.
    const SECRET: &str = "hubspot-client-secret";
    const URL: &str = "https://hooks.example.com/hooks/hubspot?portal=62515&q=a%3Ab";
    const BODY: &[u8] = br#"[{"eventId":1}]"#;
    const TS_MS: i64 = 1_700_000_000_000;
    const NOW: i64 = 1_700_000_000;
    const SIG: &str = "tbLfrUwWrKYZ19NJvS0nea52ATAvYw2kSr2yFQ1N28c=";

    fn v(secrets: &[&str]) -> Verifier {
        verifier(json!({"scheme": "hubspot_v3", "secret": "hs"}), secrets)
    }

    fn check(
        v: &Verifier,
        pairs: &[(&str, &str)],
        method: &str,
        url: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, &'static str> {
        let headers = headers(pairs);
        let req = Request {
            method,
            url,
            headers: &headers,
            body,
        };
        v.verify(&req, now).map_err(|e| e.check())
    }

    fn signed(
        v: &Verifier,
        sig: &str,
        ts: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, &'static str> {
        let pairs = [
            ("X-HubSpot-Signature-v3", sig),
            ("X-HubSpot-Request-Timestamp", ts),
        ];
        check(v, &pairs, "POST", URL, body, now)
    }

    fn sign_at(ts_ms: i64) -> String {
        let msg = format!("POSThttps://hooks.example.com/hooks/hubspot?portal=62515&q=a:b[{{\"eventId\":1}}]{ts_ms}");
        b64(&hmac256(SECRET.as_bytes(), msg.as_bytes()))
    }

    #[test]
    fn valid_signature_passes() {
        let ok = signed(&v(&[SECRET]), SIG, "1700000000000", BODY, NOW).expect("valid");
        assert_eq!(ok, Verified::new(None, Some(NOW)));
        assert_eq!(v(&[SECRET]).delivery_id_header(), None);
        // Already-decoded URL signs the same.
        let pairs = [
            ("X-HubSpot-Signature-v3", SIG),
            ("X-HubSpot-Request-Timestamp", "1700000000000"),
        ];
        let url = "https://hooks.example.com/hooks/hubspot?portal=62515&q=a%3ab";
        assert!(
            check(&v(&[SECRET]), &pairs, "POST", url, BODY, NOW).is_ok(),
            "lower-case escape"
        );
    }

    #[test]
    fn method_url_body_and_timestamp_are_all_signed() {
        let v = v(&[SECRET]);
        let pairs = [
            ("X-HubSpot-Signature-v3", SIG),
            ("X-HubSpot-Request-Timestamp", "1700000000000"),
        ];
        assert_eq!(
            check(&v, &pairs, "PUT", URL, BODY, NOW),
            Err("signature_mismatch")
        );
        assert_eq!(
            check(
                &v,
                &pairs,
                "POST",
                "https://hooks.example.com/hooks/hubspot?portal=62516&q=a%3Ab",
                BODY,
                NOW
            ),
            Err("signature_mismatch")
        );
        assert_eq!(
            signed(&v, SIG, "1700000000000", br#"[{"eventId":2}]"#, NOW),
            Err("signature_mismatch")
        );
        assert_eq!(
            signed(&v, SIG, "1700000000001", BODY, NOW),
            Err("signature_mismatch")
        );
    }

    #[test]
    fn wrong_secret_mismatches() {
        assert_eq!(
            signed(&v(&["other"]), SIG, "1700000000000", BODY, NOW),
            Err("signature_mismatch")
        );
    }

    #[test]
    fn missing_headers() {
        let v = v(&[SECRET]);
        let only_ts = [("X-HubSpot-Request-Timestamp", "1700000000000")];
        assert_eq!(
            check(&v, &only_ts, "POST", URL, BODY, NOW),
            Err("signature_missing")
        );
        let only_sig = [("X-HubSpot-Signature-v3", SIG)];
        assert_eq!(
            check(&v, &only_sig, "POST", URL, BODY, NOW),
            Err("timestamp_missing")
        );
        // The v1/v2 header is not the v3 one.
        let v1 = [
            ("X-HubSpot-Signature", SIG),
            ("X-HubSpot-Request-Timestamp", "1700000000000"),
        ];
        assert_eq!(
            check(&v, &v1, "POST", URL, BODY, NOW),
            Err("signature_missing")
        );
    }

    #[test]
    fn malformed_signatures_are_rejected() {
        let v = v(&[SECRET]);
        for bad in [
            &SIG[..SIG.len() - 4],
            "",
            "v3=tbLfrUwWrKYZ19NJvS0nea52ATAvYw2kSr2yFQ1N28c=",
        ] {
            let got = signed(&v, bad, "1700000000000", BODY, NOW);
            let expected = if bad.is_empty() {
                "signature_missing"
            } else {
                "signature_malformed"
            };
            assert_eq!(got, Err(expected), "{bad:?}");
        }
    }

    #[test]
    fn timestamp_window_in_milliseconds() {
        let v = v(&[SECRET]);
        let edge = TS_MS - 300_000;
        assert!(signed(&v, &sign_at(edge), &edge.to_string(), BODY, NOW).is_ok());
        let late = edge - 1;
        assert_eq!(
            signed(&v, &sign_at(late), &late.to_string(), BODY, NOW),
            Err("timestamp_stale")
        );
        let ahead = TS_MS + 300_001;
        assert_eq!(
            signed(&v, &sign_at(ahead), &ahead.to_string(), BODY, NOW),
            Err("timestamp_stale")
        );
        // Whole seconds, as the brief's cases state them.
        assert_window(300, |age| signed(&v, SIG, "1700000000000", BODY, NOW + age));
        // A timestamp in seconds (a common mistake) is decades old.
        assert_eq!(
            signed(&v, SIG, "1700000000", BODY, NOW),
            Err("timestamp_stale")
        );
    }

    #[test]
    fn non_numeric_timestamp_is_malformed() {
        for ts in ["now", "1700000000000.0", "-1700000000000"] {
            assert_eq!(
                signed(&v(&[SECRET]), SIG, ts, BODY, NOW),
                Err("timestamp_malformed"),
                "{ts}"
            );
        }
    }

    #[test]
    fn rotation_second_secret_matches() {
        assert!(signed(&v(&["old", SECRET]), SIG, "1700000000000", BODY, NOW).is_ok());
    }

    #[test]
    fn uri_decoding_follows_hubspots_table_only() {
        assert_eq!(
            decode_uri("https%3A%2F%2Fx.io%2Fa%3Fb%40c%21%24%27%28%29%2A%2C%3B"),
            "https://x.io/a?b@c!$'()*,;"
        );
        assert_eq!(decode_uri("%3a%2f"), ":/");
        // Escapes outside the table, and broken ones, stay as sent.
        assert_eq!(decode_uri("a%20b%26c%3D%25"), "a%20b%26c%3D%25");
        assert_eq!(decode_uri("%"), "%");
        assert_eq!(decode_uri("%3"), "%3");
        assert_eq!(decode_uri("%%3A"), "%:");
        assert_eq!(decode_uri("%é%3A"), "%é:");
        assert_eq!(decode_uri("%2%3A"), "%2:");
        assert_eq!(decode_uri("%+A%3A"), "%+A:");
    }
}
