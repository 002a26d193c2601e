//! The generic `hmac` scheme, for senders with a home-grown signature: an
//! HMAC of the body (or of `"{timestamp}.{body}"`) in a header of their
//! choosing, hex or base64, SHA-256 or SHA-512, maybe behind a prefix.
//!
//! (Named `generic` rather than `hmac` so it does not shadow the `hmac` crate.)

use super::{
    decode_base64, decode_hex, optional_header, parse_integer, signature_header, timestamp_header,
    Encoding, HmacConfig, Keys, Request, SignatureError, Tolerance, Verified,
};

pub(super) fn verify(
    options: &HmacConfig,
    keys: &Keys,
    tolerance: Tolerance,
    req: &Request<'_>,
    now: i64,
) -> Result<Verified, SignatureError> {
    let name = options.header.as_str();
    let prefix = options.prefix.as_deref().filter(|p| !p.is_empty());
    let value = signature_header(req, name)?;

    let timestamp = match &options.timestamp_header {
        None => None,
        Some(ts_name) => {
            let ts_name = ts_name.as_str();
            let text = timestamp_header(req, ts_name)?;
            let ts = parse_integer(ts_name, text)?;
            tolerance.check_secs(ts_name, ts, now)?;
            Some((text, ts))
        }
    };

    let encoded = match prefix {
        None => value,
        Some(prefix) => value.strip_prefix(prefix).ok_or_else(|| {
            SignatureError::malformed(name, "does not start with the configured prefix")
        })?,
    };
    let candidate = match options.encoding {
        Encoding::Hex => decode_hex(name, encoded, options.algorithm)?,
        Encoding::Base64 => decode_base64(name, encoded, options.algorithm)?,
    };
    let message: &[&[u8]] = match timestamp {
        None => &[req.body],
        Some((text, _)) => &[text.as_bytes(), b".", req.body],
    };
    keys.verify(name, options.algorithm, message, &[candidate])?;
    Ok(Verified {
        delivery_id: options
            .id_header
            .as_ref()
            .and_then(|h| optional_header(req, h.as_str())),
        timestamp: timestamp.map(|(_, ts)| ts),
    })
}

#[cfg(test)]
mod tests {
    use super::super::primitives::mac;
    use super::super::test_support::{assert_window, b64, run, verifier};
    use super::super::{Algorithm, Verified, Verifier};
    use serde_json::json;

    const SECRET: &str = "key";
    const BODY: &[u8] = br#"{"a":1}"#;
    // Computed independently with python3:
    // hmac.new(b"key", b'{"a":1}', hashlib.sha256).hexdigest()
    const HEX256: &str = "88a67f24bbcdaed0e6c997404bb79a743baf44c6bab2f4c27328e3009d22e342";
    // base64.b64encode(hmac.new(b"key", b'1700000000.{"a":1}', hashlib.sha512).digest())
    const B64_512_TS: &str =
        "FMvBlgqM9BRdLfJMo8fpNH+XILwHYOCqgGjpZ1SppI9ajH1rTOqpj0olJadhqPVevWMZUCaWw8cwArr1FdvF/w==";
    const NOW: i64 = 1_700_000_000;

    fn plain(secrets: &[&str]) -> Verifier {
        verifier(
            json!({"scheme": "hmac", "secret": "s", "header": "X-Signature"}),
            secrets,
        )
    }

    fn full(secrets: &[&str]) -> Verifier {
        verifier(
            json!({"scheme": "hmac", "secret": "s", "header": "X-Signature", "algorithm": "sha512",
                   "encoding": "base64", "prefix": "sha512=", "timestamp_header": "X-Timestamp",
                   "id_header": "X-Delivery", "tolerance": "5m"}),
            secrets,
        )
    }

    fn check_full(
        v: &Verifier,
        sig: &str,
        ts: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, &'static str> {
        run(
            v,
            &[
                ("X-Signature", sig),
                ("X-Timestamp", ts),
                ("X-Delivery", "d-1"),
            ],
            body,
            now,
        )
    }

    fn sign_full(ts: i64) -> String {
        let mut msg = format!("{ts}.").into_bytes();
        msg.extend_from_slice(BODY);
        let tag = mac(Algorithm::Sha512, SECRET.as_bytes(), &[&msg]).expect("hmac");
        format!("sha512={}", b64(&tag))
    }

    #[test]
    fn plain_hex_sha256_passes() {
        let v = plain(&[SECRET]);
        let ok = run(&v, &[("x-signature", HEX256)], BODY, 0).expect("valid");
        assert_eq!(ok, Verified::new(None, None));
        assert_eq!(v.delivery_id_header(), None);
    }

    #[test]
    fn full_options_pass() {
        let v = full(&[SECRET]);
        let sig = format!("sha512={B64_512_TS}");
        let ok = check_full(&v, &sig, "1700000000", BODY, NOW).expect("valid");
        assert_eq!(ok, Verified::new(Some("d-1".into()), Some(NOW)));
        assert_eq!(v.delivery_id_header(), Some("X-Delivery"));
    }

    #[test]
    fn wrong_secret_and_changed_body_mismatch() {
        assert_eq!(
            run(&plain(&["yek"]), &[("X-Signature", HEX256)], BODY, 0),
            Err("signature_mismatch")
        );
        assert_eq!(
            run(
                &plain(&[SECRET]),
                &[("X-Signature", HEX256)],
                br#"{"a":2}"#,
                0
            ),
            Err("signature_mismatch")
        );
        let sig = format!("sha512={B64_512_TS}");
        assert_eq!(
            check_full(&full(&["yek"]), &sig, "1700000000", BODY, NOW),
            Err("signature_mismatch")
        );
        assert_eq!(
            check_full(&full(&[SECRET]), &sig, "1700000000", br#"{"a":2}"#, NOW),
            Err("signature_mismatch")
        );
        assert_eq!(
            check_full(&full(&[SECRET]), &sig, "1700000001", BODY, NOW),
            Err("signature_mismatch")
        );
    }

    #[test]
    fn missing_headers() {
        assert_eq!(
            run(&plain(&[SECRET]), &[("X-Other", HEX256)], BODY, 0),
            Err("signature_missing")
        );
        let sig = format!("sha512={B64_512_TS}");
        assert_eq!(
            run(&full(&[SECRET]), &[("X-Signature", &sig)], BODY, NOW),
            Err("timestamp_missing")
        );
    }

    #[test]
    fn malformed_signatures_are_rejected() {
        let v = plain(&[SECRET]);
        for bad in [&HEX256[..63], &HEX256[..62], "sha256=88a6", B64_512_TS] {
            assert_eq!(
                run(&v, &[("X-Signature", bad)], BODY, 0),
                Err("signature_malformed"),
                "{bad}"
            );
        }
        let v = full(&[SECRET]);
        // Right value, missing or wrong prefix; or the SHA-256 length under sha512.
        for bad in [
            B64_512_TS.to_owned(),
            format!("sha256={B64_512_TS}"),
            format!("sha512={}", &B64_512_TS[..44]),
        ] {
            assert_eq!(
                check_full(&v, &bad, "1700000000", BODY, NOW),
                Err("signature_malformed"),
                "{bad}"
            );
        }
    }

    #[test]
    fn timestamp_window_both_ways() {
        let v = full(&[SECRET]);
        assert_window(300, |age| {
            let ts = NOW - age;
            check_full(&v, &sign_full(ts), &ts.to_string(), BODY, NOW)
        });
    }

    #[test]
    fn non_numeric_timestamp_is_malformed() {
        let sig = format!("sha512={B64_512_TS}");
        for ts in ["x", "1700000000.0", "2023-11-14T22:13:20Z"] {
            assert_eq!(
                check_full(&full(&[SECRET]), &sig, ts, BODY, NOW),
                Err("timestamp_malformed"),
                "{ts}"
            );
        }
    }

    #[test]
    fn rotation_second_secret_matches() {
        assert!(run(
            &plain(&["old", SECRET]),
            &[("X-Signature", HEX256)],
            BODY,
            0
        )
        .is_ok());
        let sig = format!("sha512={B64_512_TS}");
        assert!(check_full(&full(&["old", SECRET]), &sig, "1700000000", BODY, NOW).is_ok());
    }
}
