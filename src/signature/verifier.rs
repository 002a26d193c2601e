//! [`Verifier`]: a `signature:` block compiled with its secret values at
//! load, and the one `verify` that dispatches a request to its scheme's file.

use sha2::Sha256;

use super::primitives::{Keys, Tolerance};
use super::{generic, github, hubspot, shopify, slack, standard, stripe, token, zendesk};
use super::{ConfigError, HeaderName, Request, SignatureConfig, SignatureError, TokenConfig};
use super::{TokenSource, Verified};
use crate::secret::Secret;

/// A compiled `signature:` block: the scheme with its options, and the key
/// bytes. Built once at load time by [`Verifier::new`]; [`Verifier::verify`]
/// does no parsing of configuration.
#[derive(Debug)]
pub struct Verifier {
    config: SignatureConfig,
    keys: Keys,
    tolerance: Tolerance,
}

impl Verifier {
    /// Compile `config`. `secrets` holds every active signing secret (several
    /// during a rotation) of the secret named by `config.secret()`.
    pub fn new(config: &SignatureConfig, secrets: Vec<Secret>) -> Result<Verifier, ConfigError> {
        let keys = match config {
            SignatureConfig::None {} => Keys(Vec::new()),
            _ if secrets.is_empty() => {
                return Err(ConfigError::NoSecrets {
                    scheme: config.name(),
                })
            }
            SignatureConfig::StandardWebhooks(_) => standard::decode_keys(&secrets)?,
            _ => Keys::from_secrets(&secrets)?,
        };
        if let SignatureConfig::Hmac(h) = config {
            if h.tolerance.is_some() && h.timestamp_header.is_none() {
                return Err(ConfigError::ToleranceUnused);
            }
        }
        Ok(Verifier {
            config: config.clone(),
            keys,
            tolerance: Tolerance::from_config(config.tolerance()),
        })
    }

    /// The configuration this verifier was compiled from.
    pub fn config(&self) -> &SignatureConfig {
        &self.config
    }

    /// Name of the header carrying the sender's delivery id, if the scheme has
    /// one. Stripe, Slack and HubSpot have none (their ids are in the body).
    pub fn delivery_id_header(&self) -> Option<&str> {
        match &self.config {
            SignatureConfig::StandardWebhooks(_) => Some(standard::ID_HEADER),
            SignatureConfig::Github(_) => Some(github::DELIVERY_HEADER),
            SignatureConfig::Shopify(_) => Some(shopify::WEBHOOK_ID_HEADER),
            SignatureConfig::Zendesk(_) => Some(zendesk::INVOCATION_ID_HEADER),
            SignatureConfig::Hmac(h) => h.id_header.as_ref().map(HeaderName::as_str),
            SignatureConfig::None {}
            | SignatureConfig::Stripe(_)
            | SignatureConfig::Slack(_)
            | SignatureConfig::HubspotV3(_)
            | SignatureConfig::Token(_) => None,
        }
    }

    /// The body field that carries a `token` scheme's token. Ingress removes
    /// it from the parsed body, so the stored event never holds the secret.
    pub fn secret_field(&self) -> Option<&str> {
        match &self.config {
            SignatureConfig::Token(TokenConfig {
                from: TokenSource::Field(name),
                ..
            }) => Some(name),
            _ => None,
        }
    }

    /// Does this scheme sign a timestamp (so a captured delivery goes stale)?
    pub fn signs_timestamp(&self) -> bool {
        match &self.config {
            SignatureConfig::Hmac(h) => h.timestamp_header.is_some(),
            other => other.timed().is_some(),
        }
    }

    /// A key for what the sender signed in a verified request, for refusing
    /// its replay within the tolerance: a hash of the signed timestamp, the
    /// delivery id where the scheme signs it (Standard Webhooks) and the
    /// body. Unsigned parts (Zendesk's invocation id, Stripe's extra `v1=`
    /// entries) are left out, so changing them does not make a new key.
    /// `None` for schemes that sign no timestamp.
    pub fn replay_key(&self, verified: &Verified, body: &[u8]) -> Option<String> {
        let ts = verified.timestamp.filter(|_| self.signs_timestamp())?;
        let signed_id = match &self.config {
            SignatureConfig::StandardWebhooks(_) => verified.delivery_id.as_deref(),
            _ => None,
        };
        let mut h = <Sha256 as sha2::Digest>::new();
        sha2::Digest::update(&mut h, ts.to_string().as_bytes());
        sha2::Digest::update(&mut h, b"\0");
        sha2::Digest::update(&mut h, signed_id.unwrap_or("").as_bytes());
        sha2::Digest::update(&mut h, b"\0");
        sha2::Digest::update(&mut h, body);
        Some(hex::encode(sha2::Digest::finalize(h)))
    }

    /// Verify one request. `now` is the current time in unix seconds, passed
    /// in so tests control the clock.
    pub fn verify(&self, req: &Request<'_>, now: i64) -> Result<Verified, SignatureError> {
        let (keys, tolerance) = (&self.keys, self.tolerance);
        match &self.config {
            SignatureConfig::None {} => Ok(Verified::new(None, None)),
            SignatureConfig::StandardWebhooks(_) => standard::verify(keys, tolerance, req, now),
            SignatureConfig::Stripe(_) => stripe::verify(keys, tolerance, req, now),
            SignatureConfig::Github(_) => github::verify(keys, req),
            SignatureConfig::Slack(_) => slack::verify(keys, tolerance, req, now),
            SignatureConfig::Shopify(_) => shopify::verify(keys, req),
            SignatureConfig::Zendesk(_) => zendesk::verify(keys, tolerance, req, now),
            SignatureConfig::HubspotV3(_) => hubspot::verify(keys, tolerance, req, now),
            SignatureConfig::Hmac(h) => generic::verify(h, keys, tolerance, req, now),
            SignatureConfig::Token(t) => token::verify(keys, &t.from, req),
        }
    }
}
