//! Where connector secrets and base URLs come from: the environment first,
//! then `secrets.yaml` in the data dir. Values are [`Secret`]s from the moment
//! they are read.

use crate::secret::Secret;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A snapshot of the environment and the secrets file.
#[derive(Debug, Default, Clone)]
pub struct SecretSource {
    env: HashMap<String, Secret>,
    /// Values from the file; a list holds several active values (rotation).
    file: HashMap<String, HashMap<String, Vec<Secret>>>,
    base_urls: HashMap<String, String>,
    /// Answer [`PLACEHOLDER`] for a secret that is not set instead of nothing
    /// (`switchboard test`, which sends no request).
    placeholders: bool,
    /// Where OAuth2 token files are (`<data>/oauth`): read once and moved
    /// into the store; `None`: none are read.
    token_dir: Option<PathBuf>,
}

/// The value of an unset secret under [`SecretSource::with_placeholders`]:
/// valid base64, so every signature scheme accepts it as a key.
pub const PLACEHOLDER: &str = "cGxhY2Vob2xkZXI=";

/// `secrets.yaml`: `{ <connector>: { <secret>: value }, base_urls: { <connector>: url } }`.
#[derive(Deserialize)]
struct SecretsFile {
    #[serde(default)]
    base_urls: HashMap<String, String>,
    #[serde(flatten)]
    connectors: HashMap<String, HashMap<String, SecretValue>>,
}

/// A secret may be a list in the file (several active signing secrets).
#[derive(Deserialize)]
#[serde(untagged)]
enum SecretValue {
    One(String),
    Many(Vec<String>),
}

impl SecretSource {
    /// Read the process environment and, if it exists, `file`.
    pub fn load(file: &Path) -> Result<Self, crate::yaml::LoadError> {
        match std::fs::read_to_string(file) {
            Ok(text) => Self::load_text(file, &text),
            Err(_) => Ok(SecretSource::from_env(std::env::vars())),
        }
    }

    /// Read the process environment and `text`, a secrets file's content
    /// (`file` names it in errors): the demo's built-in secrets.
    pub fn load_text(file: &Path, text: &str) -> Result<Self, crate::yaml::LoadError> {
        let mut s = SecretSource::from_env(std::env::vars());
        let (f, _) = crate::yaml::load::<SecretsFile>(file, text)?;
        s.base_urls.extend(f.base_urls);
        for (c, vals) in f.connectors {
            let m = vals
                .into_iter()
                .map(|(k, v)| {
                    // A value is one secret, spaces and all; only a
                    // YAML list holds several.
                    let v = match v {
                        SecretValue::One(s) => vec![Secret::new(s)],
                        SecretValue::Many(l) => l.into_iter().map(Secret::new).collect(),
                    };
                    (k, v)
                })
                .collect();
            s.file.insert(c, m);
        }
        Ok(s)
    }

    /// Only the `SWITCHBOARD_SECRET_*` and `SWITCHBOARD_BASE_URL_*` variables are kept.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut s = SecretSource::default();
        for (k, v) in vars {
            if k.starts_with("SWITCHBOARD_SECRET_") {
                s.env.insert(k, Secret::new(v));
            } else if let Some(c) = k.strip_prefix("SWITCHBOARD_BASE_URL_") {
                s.base_urls.insert(c.to_ascii_lowercase(), v);
            }
        }
        s
    }

    /// `SWITCHBOARD_SECRET_<CONNECTOR>_<SECRET>`, upper case, other characters as `_`.
    pub fn env_name(connector: &str, secret: &str) -> String {
        format!(
            "SWITCHBOARD_SECRET_{}_{}",
            env_part(connector),
            env_part(secret)
        )
    }

    /// Point `connector` at `url`, over the environment and the file
    /// (`serve --demo` points the shipped connectors at the sandbox).
    pub fn with_base_url(mut self, connector: &str, url: String) -> Self {
        self.base_urls.insert(connector.to_string(), url);
        self
    }

    /// Keep OAuth2 tokens in `dir`, one file per connector.
    pub fn with_token_dir(mut self, dir: PathBuf) -> Self {
        self.token_dir = Some(dir);
        self
    }

    /// The OAuth2 token file of `connector`: `<dir>/<connector>.json`.
    pub fn token_file(&self, connector: &str) -> Option<PathBuf> {
        Some(self.token_dir.as_ref()?.join(format!("{connector}.json")))
    }

    /// Fill every secret that is not set with [`PLACEHOLDER`], so connectors
    /// load without credentials. Only for code that never calls an API: a
    /// placeholder would only ever earn a 401.
    pub fn with_placeholders(mut self) -> Self {
        self.placeholders = true;
        self
    }

    /// The secret's value (the first of a list), for templates.
    pub fn get(&self, connector: &str, secret: &str) -> Option<Secret> {
        self.get_all(connector, secret)?.into_iter().next()
    }

    /// Every active value of a secret, for verifying signatures during a
    /// rotation: the variable and `<variable>_PREVIOUS` if set, else the
    /// file's value or list. A value is never split: a secret may contain
    /// spaces.
    pub fn get_all(&self, connector: &str, secret: &str) -> Option<Vec<Secret>> {
        let name = Self::env_name(connector, secret);
        if let Some(v) = self.env.get(&name) {
            let previous = self.env.get(&format!("{name}_PREVIOUS"));
            return Some(std::iter::once(v).chain(previous).cloned().collect());
        }
        if let Some(v) = self.file.get(connector).and_then(|m| m.get(secret)) {
            if !v.is_empty() {
                return Some(v.clone());
            }
        }
        self.placeholders.then(|| vec![Secret::new(PLACEHOLDER)])
    }

    pub fn base_url(&self, connector: &str) -> Option<String> {
        self.base_urls
            .get(connector)
            .or_else(|| {
                self.base_urls
                    .get(&env_part(connector).to_ascii_lowercase())
            })
            .cloned()
    }
}

fn env_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_wins_over_file_and_names_are_normalised() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secrets.yaml");
        std::fs::write(
            &f,
            "hubspot: { token: from-file, other: x }\nzendesk: { webhook_secret: [new, old] }\nbase_urls: { hubspot: http://127.0.0.1:1 }\n",
        )
        .unwrap();
        let mut s = SecretSource::load(&f).unwrap();
        s.env.insert(
            "SWITCHBOARD_SECRET_HUBSPOT_TOKEN".into(),
            Secret::new("from-env"),
        );
        assert_eq!(s.get("hubspot", "token").unwrap().expose(), "from-env");
        assert_eq!(s.get("hubspot", "other").unwrap().expose(), "x");
        assert_eq!(s.get("zendesk", "webhook_secret").unwrap().expose(), "new");
        let all = s.get_all("zendesk", "webhook_secret").unwrap();
        assert_eq!(
            all.iter().map(|v| v.expose()).collect::<Vec<_>>(),
            ["new", "old"]
        );
        s.env.insert(
            "SWITCHBOARD_SECRET_GITHUB_SECRET".into(),
            Secret::new("It's a Secret to Everybody"),
        );
        let all = s.get_all("github", "secret").unwrap();
        assert_eq!(
            all.iter().map(|v| v.expose()).collect::<Vec<_>>(),
            ["It's a Secret to Everybody"]
        );
        s.env.insert(
            "SWITCHBOARD_SECRET_GITHUB_SECRET_PREVIOUS".into(),
            Secret::new("old one"),
        );
        let all = s.get_all("github", "secret").unwrap();
        assert_eq!(
            all.iter().map(|v| v.expose()).collect::<Vec<_>>(),
            ["It's a Secret to Everybody", "old one"]
        );
        assert!(s.get("hubspot", "missing").is_none());
        let s = s.with_placeholders();
        assert_eq!(s.get("hubspot", "missing").unwrap().expose(), PLACEHOLDER);
        assert_eq!(s.get("hubspot", "other").unwrap().expose(), "x");
        assert_eq!(s.base_url("hubspot").unwrap(), "http://127.0.0.1:1");
        assert_eq!(
            SecretSource::env_name("my-crm", "api.key"),
            "SWITCHBOARD_SECRET_MY_CRM_API_KEY"
        );
    }
}
