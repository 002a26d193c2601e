//! Shopify: `X-Shopify-Hmac-Sha256: <base64>`, HMAC-SHA256 of the body, keyed
//! with the app's client secret.
//!
//! No timestamp is signed (`X-Shopify-Triggered-At` is not covered by the
//! HMAC, so checking it would prove nothing); replays are caught by the
//! delivery id `X-Shopify-Webhook-Id`.

use super::{
    decode_base64, optional_header, signature_header, Algorithm, Keys, Request, SignatureError,
    Verified,
};

const HEADER: &str = "X-Shopify-Hmac-Sha256";
pub(super) const WEBHOOK_ID_HEADER: &str = "X-Shopify-Webhook-Id";

pub(super) fn verify(keys: &Keys, req: &Request<'_>) -> Result<Verified, SignatureError> {
    let value = signature_header(req, HEADER)?;
    let candidate = decode_base64(HEADER, value, Algorithm::Sha256)?;
    keys.verify(HEADER, Algorithm::Sha256, &[req.body], &[candidate])?;
    Ok(Verified::new(optional_header(req, WEBHOOK_ID_HEADER), None))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{run, verifier};
    use super::super::{Verified, Verifier};
    use serde_json::json;

    // Shopify publishes no fixed vector; computed independently with python3:
    // base64.b64encode(hmac.new(b"shpss_test_secret",
    //   b'{"id":820982911946154508,"email":"jon@example.com"}', hashlib.sha256).digest())
    const SECRET: &str = "shpss_test_secret";
    const BODY: &[u8] = br#"{"id":820982911946154508,"email":"jon@example.com"}"#;
    const SIG: &str = "LnwdZPLBbdjkBwPD/lDL1/rYEGby/GHPtL1aAH6Dxjc=";
    const ID: &str = "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043";

    fn v(secrets: &[&str]) -> Verifier {
        verifier(json!({"scheme": "shopify", "secret": "shopify"}), secrets)
    }

    fn check(v: &Verifier, sig: &str, body: &[u8]) -> Result<Verified, &'static str> {
        run(
            v,
            &[("X-Shopify-Hmac-Sha256", sig), ("X-Shopify-Webhook-Id", ID)],
            body,
            0,
        )
    }

    #[test]
    fn valid_signature_passes() {
        let ok = check(&v(&[SECRET]), SIG, BODY).expect("valid");
        assert_eq!(ok, Verified::new(Some(ID.into()), None));
        assert_eq!(
            v(&[SECRET]).delivery_id_header(),
            Some("X-Shopify-Webhook-Id")
        );
    }

    #[test]
    fn wrong_secret_and_changed_body_mismatch() {
        assert_eq!(
            check(&v(&["shpss_other"]), SIG, BODY),
            Err("signature_mismatch")
        );
        let body = br#"{"id":820982911946154509,"email":"jon@example.com"}"#;
        assert_eq!(check(&v(&[SECRET]), SIG, body), Err("signature_mismatch"));
    }

    #[test]
    fn missing_header() {
        assert_eq!(
            run(&v(&[SECRET]), &[("X-Shopify-Webhook-Id", ID)], BODY, 0),
            Err("signature_missing")
        );
    }

    #[test]
    fn malformed_signatures_are_rejected() {
        let v = v(&[SECRET]);
        for bad in [
            &SIG[..SIG.len() - 4],
            &SIG[..SIG.len() - 5],
            "sha256=LnwdZPLB",
            "not base64!",
        ] {
            assert_eq!(check(&v, bad, BODY), Err("signature_malformed"), "{bad}");
        }
    }

    #[test]
    fn hex_instead_of_base64_is_malformed() {
        let hex = "2e7c1d64f2c16dd8e40703c3fe50cbd7fad81066f2fc61cfb4bd5a007e83c637";
        assert_eq!(check(&v(&[SECRET]), hex, BODY), Err("signature_malformed"));
    }

    #[test]
    fn rotation_second_secret_matches() {
        assert!(check(&v(&["shpss_old", SECRET]), SIG, BODY).is_ok());
    }
}
