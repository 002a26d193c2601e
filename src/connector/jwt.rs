//! Signed JWT assertions for the OAuth2 JWT-bearer grant (RFC 7523), as
//! Google service accounts and other "server to server" OAuth use: the
//! connector's private key signs a short-lived JWT (RFC 7519) naming the
//! issuer, the audience and the scopes, and the token endpoint answers an
//! access token for it.
//!
//! RS256 (RSASSA-PKCS1-v1_5 with SHA-256) through ring, which the tree
//! already builds for rustls (no new crate). The key is read from PEM:
//! PKCS#8 (`-----BEGIN PRIVATE KEY-----`, the `private_key` of a Google key
//! file) or PKCS#1 (`-----BEGIN RSA PRIVATE KEY-----`). No error names a
//! byte of the key.

use crate::secret::Secret;
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// How long an assertion is valid: one hour, the most Google accepts.
pub const LIFETIME_S: i64 = 3600;

/// A private key that signs assertions.
pub struct Signer {
    key: ring::signature::RsaKeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(***)")
    }
}

/// What an assertion says.
pub struct Claims<'a> {
    /// `iss`: who signs (a service account's `client_email`).
    pub issuer: &'a str,
    /// `sub`: the user to act as (domain-wide delegation), if any.
    pub subject: Option<&'a str>,
    /// `aud`: the token endpoint (or what the provider names).
    pub audience: &'a str,
    /// `scope`: space-separated, if any.
    pub scope: Option<String>,
    /// `iat`, Unix seconds; `exp` is [`LIFETIME_S`] later.
    pub issued_at: i64,
}

impl Signer {
    /// Read a PEM private key. A key pasted from a JSON file with its line
    /// breaks still escaped (`\n`) is read as if they were line breaks.
    pub fn from_pem(pem: &str) -> Result<Signer, String> {
        let text = pem.replace("\\n", "\n");
        let begin = text.find("-----BEGIN ").ok_or(
            "not a PEM key: no `-----BEGIN PRIVATE KEY-----` line (paste the whole key, header and footer included)",
        )?;
        let after = &text[begin + "-----BEGIN ".len()..];
        let label_end = after
            .find("-----")
            .ok_or("not a PEM key: a broken BEGIN line")?;
        let label = &after[..label_end];
        let body = &after[label_end + "-----".len()..];
        let end = body
            .find(&format!("-----END {label}-----"))
            .ok_or_else(|| format!("not a PEM key: no `-----END {label}-----` line"))?;
        let b64: String = body[..end]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|_| "not a PEM key: its body is not base64".to_string())?;
        let key = match label {
            "PRIVATE KEY" => ring::signature::RsaKeyPair::from_pkcs8(&der),
            "RSA PRIVATE KEY" => ring::signature::RsaKeyPair::from_der(&der),
            other => {
                return Err(format!(
                    "a `{other}` PEM block; expected an RSA key: `PRIVATE KEY` (PKCS#8, as in a Google service-account key file) or `RSA PRIVATE KEY`"
                ))
            }
        }
        .map_err(|e| format!("not a usable RSA private key ({e})"))?;
        Ok(Signer { key })
    }

    /// The signed assertion `header.claims.signature` (base64url, RS256),
    /// with `kid` in the header if given and a random `jti`.
    pub fn assertion(&self, claims: &Claims<'_>, key_id: Option<&str>) -> Result<Secret, String> {
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(k) = key_id {
            header["kid"] = json!(k);
        }
        let mut body = Map::new();
        body.insert("iss".into(), json!(claims.issuer));
        if let Some(s) = claims.subject {
            body.insert("sub".into(), json!(s));
        }
        body.insert("aud".into(), json!(claims.audience));
        if let Some(s) = &claims.scope {
            body.insert("scope".into(), json!(s));
        }
        body.insert("iat".into(), json!(claims.issued_at));
        body.insert("exp".into(), json!(claims.issued_at + LIFETIME_S));
        body.insert(
            "jti".into(),
            json!(format!("{:032x}", rand::random::<u128>())),
        );
        let input = format!("{}.{}", b64(&header), b64(&Value::Object(body)));
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| "signing the assertion failed".to_string())?;
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&sig);
        Ok(Secret::new(format!("{input}.{sig}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_keys_are_refused_without_showing_them() {
        for (pem, want) in [
            ("hello", "no `-----BEGIN PRIVATE KEY-----` line"),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n",
                "no `-----END PRIVATE KEY-----` line",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----",
                "not base64",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----",
                "not a usable RSA private key",
            ),
            (
                "-----BEGIN EC PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END EC PRIVATE KEY-----",
                "a `EC PRIVATE KEY` PEM block",
            ),
        ] {
            let err = Signer::from_pem(pem).unwrap_err();
            assert!(err.contains(want), "{pem}: {err}");
            assert!(!err.contains("c2VjcmV0") && !err.contains("AAAA"), "{err}");
        }
    }
}
