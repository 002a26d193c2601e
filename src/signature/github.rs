//! GitHub: `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the body.
//!
//! GitHub signs no timestamp, so replays are caught only by the delivery id
//! (`X-GitHub-Delivery`), which the engine deduplicates. The legacy SHA-1
//! `X-Hub-Signature` header is deliberately not accepted.

use super::{
    decode_hex, optional_header, signature_header, Algorithm, Keys, Request, SignatureError,
    Verified,
};

const HEADER: &str = "X-Hub-Signature-256";
pub(super) const DELIVERY_HEADER: &str = "X-GitHub-Delivery";

pub(super) fn verify(keys: &Keys, req: &Request<'_>) -> Result<Verified, SignatureError> {
    let value = signature_header(req, HEADER)?;
    let hex = value
        .strip_prefix("sha256=")
        .ok_or_else(|| SignatureError::malformed(HEADER, "expected `sha256=<hex>`"))?;
    let candidate = decode_hex(HEADER, hex, Algorithm::Sha256)?;
    keys.verify(HEADER, Algorithm::Sha256, &[req.body], &[candidate])?;
    Ok(Verified::new(optional_header(req, DELIVERY_HEADER), None))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{run, verifier};
    use super::super::{Verified, Verifier};
    use serde_json::json;

    // GitHub's documented example ("Validating webhook deliveries"), verbatim.
    const SECRET: &str = "It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";
    const SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    const DELIVERY: &str = "72d3162e-cc78-11e3-81ab-4c9367dc0958";

    fn v(secrets: &[&str]) -> Verifier {
        verifier(json!({"scheme": "github", "secret": "gh"}), secrets)
    }

    fn check(v: &Verifier, sig: &str, body: &[u8]) -> Result<Verified, &'static str> {
        run(
            v,
            &[
                ("X-Hub-Signature-256", sig),
                ("X-GitHub-Delivery", DELIVERY),
            ],
            body,
            0,
        )
    }

    #[test]
    fn documented_example_passes() {
        let ok = check(&v(&[SECRET]), SIG, BODY).expect("valid");
        assert_eq!(ok.delivery_id.as_deref(), Some(DELIVERY));
        assert_eq!(ok.timestamp, None);
        assert_eq!(v(&[SECRET]).delivery_id_header(), Some("X-GitHub-Delivery"));
        // No delivery header is fine: it is reported, not verified.
        let ok = run(&v(&[SECRET]), &[("x-hub-signature-256", SIG)], BODY, 0).expect("valid");
        assert_eq!(ok.delivery_id, None);
    }

    #[test]
    fn wrong_secret_and_changed_body_mismatch() {
        assert_eq!(
            check(&v(&["It's a Secret to Everybody!"]), SIG, BODY),
            Err("signature_mismatch")
        );
        assert_eq!(
            check(&v(&[SECRET]), SIG, b"Hello, World?"),
            Err("signature_mismatch")
        );
    }

    #[test]
    fn missing_header() {
        assert_eq!(
            run(&v(&[SECRET]), &[("X-GitHub-Delivery", DELIVERY)], BODY, 0),
            Err("signature_missing")
        );
        assert_eq!(
            run(&v(&[SECRET]), &[("X-Hub-Signature", "sha1=abc")], BODY, 0),
            Err("signature_missing")
        );
    }

    #[test]
    fn malformed_signatures_are_rejected() {
        let v = v(&[SECRET]);
        for bad in [
            &SIG[..SIG.len() - 1],
            &SIG[..SIG.len() - 2],
            "sha256=",
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=zz7107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        ] {
            assert_eq!(check(&v, bad, BODY), Err("signature_malformed"), "{bad}");
        }
    }

    #[test]
    fn rotation_second_secret_matches() {
        assert!(check(&v(&["old secret", SECRET]), SIG, BODY).is_ok());
    }
}
