//! `token`: a shared secret sent as is, in a header, a query parameter or a
//! body field, compared with the configured secret(s).
//!
//! For senders that sign nothing but let the admin add a value: Freshdesk
//! automation webhooks (a custom header), Wufoo (the `HandshakeKey` form
//! field), any tool with "add a query parameter". It proves that the sender
//! knows the token, nothing more: the body is not signed and no timestamp
//! limits a replay, so connectors using it should set `dedupe_window` or an
//! `event_id` (`check` warns otherwise). The comparison hashes both sides
//! first (SHA-256) and compares the digests in constant time, so neither the
//! token's bytes nor its length show in the timing.

use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::{header_text, Keys, Request, SignatureError, TokenSource, Verified};

pub(super) fn verify(
    keys: &Keys,
    from: &TokenSource,
    req: &Request<'_>,
) -> Result<Verified, SignatureError> {
    let place = || from.to_string();
    let token = match from {
        TokenSource::Header(h) => match header_text(req.headers, h.as_str()) {
            Ok(Some(t)) => t.to_owned(),
            Ok(None) => return Err(SignatureError::token_missing(place())),
            Err(()) => return Err(SignatureError::token_malformed(place(), "not valid UTF-8")),
        },
        TokenSource::Query(name) => query_param(req.url, name, place)?,
        TokenSource::Field(name) => body_field(req, name, place)?,
    };
    if token.is_empty() {
        return Err(SignatureError::token_missing(place()));
    }
    if !keys.any_equals(token.as_bytes()) {
        return Err(SignatureError::token_mismatch(place()));
    }
    Ok(Verified::new(None, None))
}

impl Keys {
    /// Whether `candidate` equals any key. Both sides are hashed first and
    /// every digest is compared, so the time depends on neither the key's
    /// length nor which key matched.
    fn any_equals(&self, candidate: &[u8]) -> bool {
        let sent = Sha256::digest(candidate);
        let mut found = Choice::from(0);
        for key in &self.0 {
            found |= Sha256::digest(key).as_slice().ct_eq(sent.as_slice());
        }
        found.into()
    }
}

/// The one value of query parameter `name`; a repeated one is malformed
/// (which one would count?).
fn query_param(
    url: &str,
    name: &str,
    place: impl Fn() -> String,
) -> Result<String, SignatureError> {
    let query = url
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or(""))
        .unwrap_or("");
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|_| SignatureError::token_malformed(place(), "the query is not URL-encoded"))?;
    one(pairs, name, place)
}

/// The top-level field `name` of a form-encoded body (by `Content-Type`) or
/// of a JSON object (anything else). A body that is neither has no field.
fn body_field(
    req: &Request<'_>,
    name: &str,
    place: impl Fn() -> String,
) -> Result<String, SignatureError> {
    let form = header_text(req.headers, "content-type")
        .ok()
        .flatten()
        .is_some_and(|c| {
            c.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if form {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_bytes(req.body).map_err(|_| {
                SignatureError::token_malformed(place(), "the body is not a URL-encoded form")
            })?;
        return one(pairs, name, place);
    }
    match serde_json::from_slice::<Value>(req.body) {
        Ok(Value::Object(mut fields)) => match fields.remove(name) {
            None | Some(Value::Null) => Err(SignatureError::token_missing(place())),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(SignatureError::token_malformed(place(), "not a string")),
        },
        _ => Err(SignatureError::token_missing(place())),
    }
}

fn one(
    pairs: Vec<(String, String)>,
    name: &str,
    place: impl Fn() -> String,
) -> Result<String, SignatureError> {
    let mut values = pairs.into_iter().filter(|(k, _)| k == name).map(|(_, v)| v);
    match (values.next(), values.next()) {
        (None, _) => Err(SignatureError::token_missing(place())),
        (Some(v), None) => Ok(v),
        (Some(_), Some(_)) => Err(SignatureError::token_malformed(place(), "given twice")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{headers, verifier, URL};
    use super::super::{Request, Verifier};
    use serde_json::json;

    const TOKEN: &str = "wufoo-handshake-7f3a";

    fn v(from: serde_json::Value, secrets: &[&str]) -> Verifier {
        verifier(
            json!({"scheme": "token", "secret": "t", "from": from}),
            secrets,
        )
    }

    fn check(
        v: &Verifier,
        url: &str,
        pairs: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), (&'static str, String)> {
        let headers = headers(pairs);
        let req = Request {
            method: "POST",
            url,
            headers: &headers,
            body,
        };
        v.verify(&req, 0)
            .map(|ok| {
                assert_eq!((ok.delivery_id, ok.timestamp), (None, None));
            })
            .map_err(|e| (e.check(), e.to_string()))
    }

    const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

    #[test]
    fn a_header_token_passes_and_a_wrong_one_does_not() {
        let v = v(json!({"header": "X-Switchboard-Token"}), &[TOKEN]);
        assert_eq!(
            check(&v, URL, &[("x-switchboard-token", TOKEN)], b"{}"),
            Ok(())
        );
        assert!(!v.signs_timestamp());
        assert_eq!(v.delivery_id_header(), None);
        let (check_name, msg) = check(
            &v,
            URL,
            &[("X-Switchboard-Token", "wufoo-handshake-7f3b")],
            b"{}",
        )
        .unwrap_err();
        assert_eq!(check_name, "signature_mismatch");
        assert_eq!(
            msg,
            "token in header X-Switchboard-Token does not match any configured secret"
        );
        let (check_name, msg) = check(&v, URL, &[], b"{}").unwrap_err();
        assert_eq!(check_name, "signature_missing");
        assert_eq!(msg, "token header X-Switchboard-Token is missing");
    }

    #[test]
    fn a_query_token_passes() {
        let v = v(json!({"query": "token"}), &[TOKEN]);
        let url = format!("https://hooks.example.com/hooks/fd?a=1&token={TOKEN}#x");
        assert_eq!(check(&v, &url, &[], b"{}"), Ok(()));
        // Percent-encoding is decoded before comparing.
        let v2 = self::v(json!({"query": "token"}), &["a b/c"]);
        assert_eq!(
            check(&v2, "http://h/hooks/x?token=a%20b%2Fc", &[], b""),
            Ok(())
        );
        assert_eq!(
            check(&v, "http://h/hooks/x?tok=1", &[], b"").unwrap_err().0,
            "signature_missing"
        );
        assert_eq!(
            check(&v, "http://h/hooks/x", &[], b"").unwrap_err().0,
            "signature_missing"
        );
        assert_eq!(
            check(&v, "http://h/hooks/x?token=", &[], b"")
                .unwrap_err()
                .0,
            "signature_missing"
        );
    }

    #[test]
    fn a_form_field_token_passes_wufoo_style() {
        let v = v(json!({"field": "HandshakeKey"}), &[TOKEN]);
        let body = format!("Field1=Ada&Field2=Lovelace&HandshakeKey={TOKEN}&EntryId=7");
        assert_eq!(check(&v, URL, &[FORM], body.as_bytes()), Ok(()));
        // A JSON body's string member counts too.
        let json_body = json!({"HandshakeKey": TOKEN, "EntryId": 7}).to_string();
        assert_eq!(check(&v, URL, &[], json_body.as_bytes()), Ok(()));
    }

    #[test]
    fn must_reject() {
        let v = v(json!({"field": "HandshakeKey"}), &[TOKEN]);
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case<'_>] = &[
            // The field is absent, empty, or another field holds the token.
            (&[FORM], "Field1=Ada", "signature_missing"),
            (&[FORM], "HandshakeKey=&Field1=Ada", "signature_missing"),
            (
                &[FORM],
                "Handshakekey=wufoo-handshake-7f3a",
                "signature_missing",
            ),
            // A prefix, a suffix, a different case.
            (
                &[FORM],
                "HandshakeKey=wufoo-handshake-7f3",
                "signature_mismatch",
            ),
            (
                &[FORM],
                "HandshakeKey=wufoo-handshake-7f3aa",
                "signature_mismatch",
            ),
            (
                &[FORM],
                "HandshakeKey=WUFOO-HANDSHAKE-7F3A",
                "signature_mismatch",
            ),
            // Given twice: which would count?
            (
                &[FORM],
                "HandshakeKey=wufoo-handshake-7f3a&HandshakeKey=x",
                "signature_malformed",
            ),
            // A trailing NUL or space, percent-encoded.
            (
                &[FORM],
                "HandshakeKey=wufoo-handshake-7f3a%00",
                "signature_mismatch",
            ),
            (
                &[FORM],
                "HandshakeKey=wufoo-handshake-7f3a+",
                "signature_mismatch",
            ),
            // JSON: not an object, a non-string token, null.
            (&[], "[\"wufoo-handshake-7f3a\"]", "signature_missing"),
            (&[], "{\"HandshakeKey\": 7}", "signature_malformed"),
            (&[], "{\"HandshakeKey\": null}", "signature_missing"),
            (&[], "not json", "signature_missing"),
            // A nested field is not the top-level one.
            (
                &[],
                "{\"form\": {\"HandshakeKey\": \"wufoo-handshake-7f3a\"}}",
                "signature_missing",
            ),
        ];
        for (headers, body, expected) in cases {
            assert_eq!(
                check(&v, URL, headers, body.as_bytes()).map_err(|e| e.0),
                Err(*expected),
                "{body}"
            );
        }
        // The token in the header or the query does not stand in for the field.
        assert_eq!(
            check(
                &v,
                &format!("http://h/x?HandshakeKey={TOKEN}"),
                &[FORM, ("HandshakeKey", TOKEN)],
                b"Field1=Ada"
            )
            .map_err(|e| e.0),
            Err("signature_missing")
        );
    }

    #[test]
    fn rotation_accepts_either_token() {
        let v = v(json!({"header": "X-Token"}), &["new-token", TOKEN]);
        assert_eq!(check(&v, URL, &[("X-Token", TOKEN)], b""), Ok(()));
        assert_eq!(check(&v, URL, &[("X-Token", "new-token")], b""), Ok(()));
        assert_eq!(
            check(&v, URL, &[("X-Token", "old-token")], b"").map_err(|e| e.0),
            Err("signature_mismatch")
        );
    }

    #[test]
    fn errors_never_show_the_token() {
        let v = v(json!({"header": "X-Token"}), &[TOKEN]);
        let (_, msg) = check(&v, URL, &[("X-Token", "wufoo-handshake-7f3")], b"").unwrap_err();
        assert!(!msg.contains(TOKEN) && !msg.contains("wufoo"), "{msg}");
        assert!(!format!("{v:?}").contains(TOKEN));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever the token, in a header or a form field: exactly the
        /// secret passes, anything else is refused.
        #[test]
        fn only_the_secret_itself_passes(
            secret in "[!-~]{1,40}",
            sent in "[!-~]{1,40}",
            field_secret in "\\PC{1,30}",
        ) {
            let h = v(json!({"header": "X-Token"}), &[&secret]);
            proptest::prop_assert_eq!(check(&h, URL, &[("X-Token", &secret)], b"").is_ok(), true);
            proptest::prop_assert_eq!(
                check(&h, URL, &[("X-Token", &sent)], b"").is_ok(),
                sent == secret
            );
            let f = v(json!({"field": "key"}), &[&field_secret]);
            let body = serde_urlencoded::to_string([("a", "1"), ("key", field_secret.as_str())])
                .expect("encodes");
            proptest::prop_assert!(check(&f, URL, &[FORM], body.as_bytes()).is_ok());
            let other = serde_urlencoded::to_string([("key", sent.as_str())]).expect("encodes");
            proptest::prop_assert_eq!(
                check(&f, URL, &[FORM], other.as_bytes()).is_ok(),
                sent == field_secret
            );
        }
    }

    #[test]
    fn the_config_takes_exactly_one_place() {
        for (config, expected) in [
            (
                json!({"scheme": "token", "secret": "t"}),
                "missing field `from`",
            ),
            (
                json!({"scheme": "token", "secret": "t", "from": {"cookie": "x"}}),
                "unknown variant `cookie`, expected one of `header`, `query`, `field`",
            ),
            (
                json!({"scheme": "token", "secret": "t", "from": {"header": "a b"}}),
                "invalid value: string \"a b\", expected a valid HTTP header name",
            ),
            (
                json!({"scheme": "token", "secret": "t", "from": {"header": "x"}, "tolerance": "1m"}),
                "unknown field `tolerance`, expected `secret` or `from`",
            ),
        ] {
            let e = serde_json::from_value::<super::super::SignatureConfig>(config.clone())
                .expect_err("must not parse")
                .to_string();
            assert!(e.starts_with(expected), "{config}: {e}");
        }
    }
}
