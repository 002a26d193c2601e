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
