//! A JSONPath (RFC 9535, via jsonpath-rust) parsed once at load time and
//! evaluated many times. Pure: no I/O.

use jsonpath_rust::parser::errors::JsonPathError;
use jsonpath_rust::parser::model::JpQuery;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// A parser error in words: pest's message and the column, not its
/// multi-line dump. The one place JSONPath errors are worded (recipes'
/// conditions and connectors' `output:` alike).
pub fn describe(e: &JsonPathError) -> String {
    match e {
        JsonPathError::PestError(pest) => {
            let full = pest.to_string();
            let column = full
                .lines()
                .next()
                .and_then(|l| l.rsplit(':').next())
                .and_then(|c| c.trim().parse::<usize>().ok());
            match column {
                Some(c) => format!("{} at column {c}", pest.variant.message()),
                None => pest.variant.message().into_owned(),
            }
        }
        other => other.to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct JsonPath {
    source: String,
    /// Shared with every other path of the same source ([`parse`]).
    query: Arc<JpQuery>,
}

/// The parsed query of `source`, shared with every other query of the
/// process with the same source (`JsonPath`s and recipe conditions): 10,000
/// recipes reading `$.event.ticket.subject` parse it once (pest's parser
/// was ~8 % of `check` on them; BENCHMARKS.md, "10,000 loaded recipes").
/// Entries are weak, freed with the last user. A query is plain data.
pub fn parse_shared(source: &str) -> Result<Arc<JpQuery>, JsonPathError> {
    static SHARED: OnceLock<Mutex<HashMap<String, Weak<JpQuery>>>> = OnceLock::new();
    let shared = SHARED.get_or_init(Default::default);
    // A panic while holding the lock leaves a map of valid entries.
    let mut map = shared.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(q) = map.get(source).and_then(Weak::upgrade) {
        return Ok(q);
    }
    let q = Arc::new(jsonpath_rust::parser::parse_json_path(source)?);
    // Drop the entries of freed queries as the map doubles, so reloads do
    // not grow it without bound.
    if map.len() >= 64 && map.len().is_power_of_two() {
        map.retain(|_, w| w.strong_count() > 0);
    }
    map.insert(source.to_owned(), Arc::downgrade(&q));
    Ok(q)
}

impl JsonPath {
    /// Parse `source`; the error says what is wrong in words a recipe author reads.
    pub fn compile(source: &str) -> Result<JsonPath, String> {
        if !source.starts_with('$') {
            return Err(format!(
                "invalid JSONPath `{source}`: expected it to start with `$`"
            ));
        }
        parse_shared(source)
            .map(|query| JsonPath {
                source: source.to_string(),
                query,
            })
            .map_err(|e| format!("invalid JSONPath `{source}`: {}", describe(&e)))
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Every node the path selects.
    pub fn select<'a>(&self, value: &'a Value) -> Vec<&'a Value> {
        jsonpath_rust::query::js_path_process(self.query.as_ref(), value)
            .map(|refs| refs.into_iter().map(|r| r.val()).collect())
            .unwrap_or_default()
    }

    /// Can this path select more than one node? (wildcards, descendants,
    /// filters, slices, unions) A singular path yields a value, a plural one a list.
    pub fn is_plural(&self) -> bool {
        let mut depth = 0usize;
        let mut quote: Option<char> = None;
        let mut prev = ' ';
        for c in self.source.chars() {
            match (quote, c) {
                (Some(q), c) if c == q && prev != '\\' => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '[') => depth += 1,
                (None, ']') => depth = depth.saturating_sub(1),
                (None, '*') => return true,
                (None, '.') if prev == '.' => return true,
                (None, '?' | ':' | ',') if depth > 0 => return true,
                _ => {}
            }
            prev = c;
        }
        false
    }

    /// What an output field holds: the node for a singular path (none when
    /// it selects nothing), the list of nodes for a plural one.
    pub fn pick(&self, value: &Value) -> Option<Value> {
        let nodes = self.select(value);
        if self.is_plural() {
            Some(Value::Array(nodes.into_iter().cloned().collect()))
        } else {
            nodes.into_iter().next().cloned()
        }
    }

    /// The first selected node, if any.
    pub fn first<'a>(&self, value: &'a Value) -> Option<&'a Value> {
        self.select(value).into_iter().next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selects_and_reports_errors() {
        let v = json!({"results": [{"id": "1"}, {"id": "2"}]});
        let p = JsonPath::compile("$.results[0].id").unwrap();
        assert_eq!(p.first(&v), Some(&json!("1")));
        let all = JsonPath::compile("$.results[*].id").unwrap();
        assert_eq!(all.select(&v).len(), 2);
        assert!(JsonPath::compile("$.results[").is_err());
        assert!(JsonPath::compile("results")
            .unwrap_err()
            .contains("start with `$`"));
        assert_eq!(JsonPath::compile("$.nope").unwrap().first(&v), None);
        assert_eq!(all.pick(&v), Some(json!(["1", "2"])));
        assert_eq!(p.pick(&v), Some(json!("1")));
        assert_eq!(JsonPath::compile("$.nope").unwrap().pick(&v), None);
    }

    #[test]
    fn paths_with_the_same_source_share_one_query() {
        let a = JsonPath::compile("$.shared.by.two").unwrap();
        let b = JsonPath::compile("$.shared.by.two").unwrap();
        assert!(Arc::ptr_eq(&a.query, &b.query));
        let other = JsonPath::compile("$.shared.by.one").unwrap();
        assert!(!Arc::ptr_eq(&a.query, &other.query));
        let weak = Arc::downgrade(&a.query);
        drop((a, b));
        assert!(weak.upgrade().is_none(), "the query outlived its paths");
    }

    #[test]
    fn plural_paths() {
        for p in [
            "$.a[*]",
            "$..id",
            "$.a[?@.x > 1]",
            "$.a[0:2]",
            "$.a[0,1]",
            "$.*",
        ] {
            assert!(JsonPath::compile(p).unwrap().is_plural(), "{p}");
        }
        for p in ["$.a[0].b", "$['a.b']['c']", "$.a[-1]", "$['x,y']"] {
            assert!(!JsonPath::compile(p).unwrap().is_plural(), "{p}");
        }
    }
}
