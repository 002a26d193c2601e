//! Durations as people write them in YAML: `300ms`, `10s`, `5m`, `1h 30m`, or a
//! bare number of seconds.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// A [`Duration`] that deserializes from `"10s"`, `"5m"`, `"250ms"` or `30` (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(HumanDuration(Duration::from_secs(s))),
            Raw::Text(t) => humantime::parse_duration(&t)
                .map(HumanDuration)
                .map_err(|e| {
                    serde::de::Error::custom(format!(
                        "invalid duration {t:?}: {e} (expected e.g. \"250ms\", \"10s\", \"5m\")"
                    ))
                }),
        }
    }
}

/// In the schema of recipe and connector files: a number of seconds or text.
impl schemars::JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: `250ms`, `10s`, `5m`, `1h 30m`, or a number of seconds.",
            "anyOf": [
                { "type": "string", "examples": ["10s", "5m", "24h"] },
                { "type": "integer", "minimum": 0 }
            ]
        })
    }
}

impl serde::Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_and_seconds() {
        let d: HumanDuration = serde_json::from_str("\"5m\"").unwrap();
        assert_eq!(d.0, Duration::from_secs(300));
        let d: HumanDuration = serde_json::from_str("30").unwrap();
        assert_eq!(d.0, Duration::from_secs(30));
        let e = serde_json::from_str::<HumanDuration>("\"soon\"").unwrap_err();
        assert!(e.to_string().contains("expected e.g."), "{e}");
    }
}
