//! Templated values in recipes and connectors (minijinja).
//!
//! Every string in a `with:`, `path:`, `query:`, `headers:` or `body:` may hold
//! `{{ ... }}`. Templates are compiled once, when the file loads, into one
//! [`Templates`] registry; rendering never parses. A string that is exactly one
//! `{{ expression }}` keeps the expression's JSON type (a number stays a number,
//! a list a list), so `ticket_id: "{{ event.ticket.id }}"` passes the id as the
//! sender sent it. Any other string renders to a string.
//!
//! Time functions and filters (`now()`, `in_tz`, `weekday`, `format_date`,
//! `date_add`, business hours) are registered here and computed by
//! [`crate::time`]; `now()` reads `run.now` from the context, never the OS, so
//! a dry run on a virtual clock and a replayed run see the same time.
//!
//! This module does no I/O and knows nothing about recipes or HTTP.

use crate::time::{self, Calendars};
use crate::yaml::{escape, LoadError, SourceMap};
use minijinja::{Environment, ErrorKind, State, UndefinedBehavior};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

pub use limits::{MAX_ITEMS, MAX_RENDER_BYTES};

/// Why a template failed to compile or render.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

impl From<minijinja::Error> for TemplateError {
    fn from(e: minijinja::Error) -> Self {
        // minijinja's Display of a render error names the template (our internal
        // id), which means nothing to a recipe author: keep kind + detail only.
        let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
        TemplateError(format!("{}{detail}", e.kind()))
    }
}

/// Owns every compiled template of a loaded set of connectors and recipes.
pub struct Templates {
    env: Environment<'static>,
    next: usize,
    /// Template name → where it is written (`recipes/x.yaml:14:9`), set by
    /// the compiler of the file ([`Templates::set_origin`]): a render error
    /// says where to look.
    origins: std::collections::HashMap<String, Arc<str>>,
    /// The registered template of each distinct source, by kind (`t`:
    /// [`Templates::compile`], `p`: [`Templates::compile_path`]) and source,
    /// and for a later template of the same source, the name it renders
    /// through: a source repeated across recipes ("{{ event.ticket.id }}")
    /// is compiled and registered with minijinja once, while each use keeps
    /// its own name (and origin). minijinja keeps ~12 KiB per template (its
    /// instruction buffers are allocated for 256 instructions and never
    /// shrunk), which made templates the largest cost of a loaded recipe
    /// (BENCHMARKS.md, "10,000 loaded recipes").
    registered: std::collections::HashMap<(char, String), (String, bool)>,
    aliases: std::collections::HashMap<String, String>,
    /// [`Templates::variables`] of each distinct source, computed once:
    /// minijinja parses the source again to list them, and a source
    /// repeated across 10,000 recipes was parsed 60,000 times by `check`
    /// (BENCHMARKS.md, "10,000 loaded recipes").
    variables: std::sync::Mutex<std::collections::HashMap<String, BTreeSet<String>>>,
    /// Business-hours calendars for `within_business_hours()` and
    /// `next_business_open()`; set once, after `_shared.yaml` loads.
    calendars: Arc<OnceLock<Calendars>>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Templates({})", self.next)
    }
}

/// One compiled string template.
#[derive(Debug, Clone)]
pub enum Template {
    /// No template syntax: the text as is.
    Literal(String),
    /// A string with template syntax; renders to a string.
    Text { name: String, source: String },
    /// Exactly `{{ expr }}`: renders to the expression's JSON value.
    Typed {
        name: String,
        source: String,
        /// `expr` is a plain dotted path (`event.ticket.id`, `input.email`):
        /// rendered by looking it up in the context ([`plain_path`]), not
        /// through minijinja, when it is there. Checked when compiled.
        path: bool,
    },
}

/// A JSON value whose string leaves are templates (`with:` inputs, JSON bodies).
#[derive(Debug, Clone)]
pub enum ValueTemplate {
    Literal(Value),
    String(Template),
    Array(Vec<ValueTemplate>),
    Object(Vec<(String, ValueTemplate)>),
}

impl Templates {
    pub fn new() -> Self {
        let mut env = Environment::new();
        // Printing an undefined value is an error (a typo must not become an
        // empty string sent to a CRM); `| default(...)` and `if x` still work.
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_keep_trailing_newline(true);
        // Bound the work one template can do: recipe files are trusted, but a
        // runaway loop must not stall a worker.
        env.set_fuel(Some(200_000));
        // Fuel bounds instructions, not memory: `[1, 2] * 50000000` is one
        // instruction. Sequence repetition is lazy in minijinja; what would
        // allocate is a filter walking it (`tojson`, `join`, `list` …) or
        // the output. So the filters that build a value are wrapped to refuse
        // oversized arguments, `tojson` serialises into a bounded buffer, and
        // rendering writes into one (`MAX_RENDER_BYTES`).
        limits::install(&mut env);
        // Path templates (named `p…`, see `compile_path`) encode every value
        // they print as one path segment: event data cannot add a `/`, `?`,
        // `#`, `@` or a `..` segment to the URL a connector calls.
        env.set_auto_escape_callback(|name| {
            if name.starts_with('p') {
                minijinja::AutoEscape::Custom(PATH_ESCAPE)
            } else {
                minijinja::AutoEscape::None
            }
        });
        env.set_formatter(|out, state, value| match state.auto_escape() {
            minijinja::AutoEscape::Custom(PATH_ESCAPE) => write_path_segment(out, value),
            _ => {
                limits::check(value)?;
                minijinja::escape_formatter(out, state, value)
            }
        });
        let calendars = Arc::new(OnceLock::new());
        register_time(&mut env, &calendars);
        env.add_function(OPT, opt);
        env.add_filter("detect_language", language::detect_language);
        Templates {
            env,
            next: 0,
            origins: Default::default(),
            registered: Default::default(),
            aliases: Default::default(),
            variables: Default::default(),
            calendars,
        }
    }

    /// Make the business-hours calendars available to templates (once).
    pub fn set_calendars(&self, calendars: Calendars) {
        let _ = self.calendars.set(calendars);
    }

    /// Calendar names a template passes literally to the business-hours
    /// functions that are not defined, for load-time checks.
    pub fn unknown_calendars(&self, t: &Template) -> Vec<String> {
        let source = match t {
            Template::Literal(_) => return Vec::new(),
            Template::Text { source, .. } | Template::Typed { source, .. } => source,
        };
        let empty = Calendars::new();
        let defined = self.calendars.get().unwrap_or(&empty);
        calendar_arguments(source)
            .into_iter()
            .filter(|n| !defined.contains_key(n))
            .collect()
    }

    /// Compile a URL path template: it must start with `/`, and every value it
    /// prints is percent-encoded as one path segment (a value that is `.` or
    /// `..` fails the render).
    pub fn compile_path(&mut self, source: &str) -> Result<Template, TemplateError> {
        if !source.starts_with('/') {
            return Err(TemplateError(format!(
                "a path must start with `/`, got `{source}` (event data must never pick the host)"
            )));
        }
        if !source.contains("{{") && !source.contains("{%") && !source.contains("{#") {
            return Ok(Template::Literal(source.to_string()));
        }
        let name = format!("p{}", self.next);
        self.next += 1;
        if let Some((first, _)) = self.registered.get(&('p', source.to_string())) {
            self.aliases.insert(name.clone(), first.clone());
        } else {
            self.env
                .add_template_owned(name.clone(), guard_chains(source).0)
                .map_err(TemplateError::from)?;
            self.registered
                .insert(('p', source.to_string()), (name.clone(), false));
        }
        Ok(Template::Text {
            name,
            source: source.to_string(),
        })
    }

    /// Compile one string.
    pub fn compile(&mut self, source: &str) -> Result<Template, TemplateError> {
        if !source.contains("{{") && !source.contains("{%") && !source.contains("{#") {
            return Ok(Template::Literal(source.to_string()));
        }
        let name = format!("t{}", self.next);
        self.next += 1;
        if let Some((first, typed)) = self.registered.get(&('t', source.to_string())) {
            let (first, typed) = (first.clone(), *typed);
            self.aliases.insert(name.clone(), first);
            let source = source.to_string();
            return Ok(if typed {
                let path = plain_path(&source).is_some();
                Template::Typed { name, source, path }
            } else {
                Template::Text { name, source }
            });
        }
        let guarded = guard_chains(source).0;
        if let Some(expr) = single_expression(&guarded) {
            // Typed: render through `tojson` and parse back; a string result
            // stays a string.
            let wrapped = format!("{{{{ ({expr}) | tojson }}}}");
            if self.env.add_template_owned(name.clone(), wrapped).is_ok() {
                self.registered
                    .insert(('t', source.to_string()), (name.clone(), true));
                return Ok(Template::Typed {
                    name,
                    source: source.to_string(),
                    path: plain_path(source).is_some(),
                });
            }
        }
        self.env
            .add_template_owned(name.clone(), guarded)
            .map_err(TemplateError::from)?;
        self.registered
            .insert(('t', source.to_string()), (name.clone(), false));
        Ok(Template::Text {
            name,
            source: source.to_string(),
        })
    }

    /// Say where `t` is written (`recipes/x.yaml:14:9`): its render errors end
    /// with ` at <origin>`.
    pub fn set_origin(&mut self, t: &Template, origin: String) {
        if let Template::Text { name, .. } | Template::Typed { name, .. } = t {
            self.origins.insert(name.clone(), origin.into());
        }
    }

    /// Compile `source`, written at JSON pointer `ptr` of the file `map`
    /// describes, the way every template of a file is compiled: a syntax
    /// error, or a filter, test or method minijinja would fail on only when
    /// rendering, is an error at its own line and column (inside a `|`
    /// block scalar too), and a render error ends with where it is written.
    pub fn compile_at(
        &mut self,
        source: &str,
        map: &SourceMap,
        ptr: &str,
        errors: &mut Vec<LoadError>,
    ) -> Option<Template> {
        let compiled = self.compile(source);
        self.located(compiled, "template error", source, map, ptr, errors)
    }

    /// [`Templates::compile_path`] as [`Templates::compile_at`] compiles.
    pub fn compile_path_at(
        &mut self,
        source: &str,
        map: &SourceMap,
        ptr: &str,
        errors: &mut Vec<LoadError>,
    ) -> Option<Template> {
        let compiled = self.compile_path(source);
        self.located(compiled, "path", source, map, ptr, errors)
    }

    /// A compiled template checked at its place, or its compile error
    /// (worded as a `what`) at its line and column.
    fn located(
        &mut self,
        compiled: Result<Template, TemplateError>,
        what: &str,
        source: &str,
        map: &SourceMap,
        ptr: &str,
        errors: &mut Vec<LoadError>,
    ) -> Option<Template> {
        match compiled {
            Ok(t) => {
                self.locate(&t, map, ptr, errors);
                Some(t)
            }
            Err(e) => {
                errors.push(compile_error(map, ptr, source, what, &e));
                None
            }
        }
    }

    /// Every string leaf of `value` (at `ptr`) as [`Templates::compile_at`]
    /// compiles one.
    pub fn compile_value_at(
        &mut self,
        value: &Value,
        map: &SourceMap,
        ptr: &str,
        errors: &mut Vec<LoadError>,
    ) -> Option<ValueTemplate> {
        match self.compile_value(value) {
            Ok(t) => {
                let mut leaves = Vec::new();
                self.leaves(&t, ptr.to_string(), &mut leaves);
                let leaves: Vec<(String, Template)> =
                    leaves.into_iter().map(|(p, l)| (p, l.clone())).collect();
                for (p, leaf) in leaves {
                    self.locate(&leaf, map, &p, errors);
                }
                Some(t)
            }
            Err((sub, e)) => {
                let p = format!("{ptr}{sub}");
                let source = value.pointer(&sub).and_then(Value::as_str).unwrap_or("");
                errors.push(compile_error(map, &p, source, "template error", &e));
                None
            }
        }
    }

    /// Give `t` its origin (`file:line:column` of `ptr`) and report the
    /// names it uses that are not defined, each at its own place.
    fn locate(&mut self, t: &Template, map: &SourceMap, ptr: &str, errors: &mut Vec<LoadError>) {
        let (Template::Text { source, .. } | Template::Typed { source, .. }) = t else {
            return;
        };
        self.set_origin(t, map.place(ptr));
        for (at, msg) in self.unknown_names(t) {
            errors.push(map.error_inside(ptr, source, at, msg));
        }
    }

    /// Compile every string leaf of a JSON value.
    pub fn compile_value(
        &mut self,
        value: &Value,
    ) -> Result<ValueTemplate, (String, TemplateError)> {
        Ok(match value {
            Value::String(s) => {
                ValueTemplate::String(self.compile(s).map_err(|e| (String::new(), e))?)
            }
            Value::Array(items) => ValueTemplate::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        self.compile_value(v)
                            .map_err(|(p, e)| (format!("/{i}{p}"), e))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => ValueTemplate::Object(
                map.iter()
                    .map(|(k, v)| {
                        let t = self
                            .compile_value(v)
                            .map_err(|(p, e)| (format!("/{}{p}", escape(k)), e))?;
                        Ok((k.clone(), t))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            other => ValueTemplate::Literal(other.clone()),
        })
    }

    /// Render a template to a JSON value.
    pub fn render(&self, t: &Template, ctx: &Value) -> Result<Value, TemplateError> {
        match t {
            Template::Literal(s) => Ok(Value::String(s.clone())),
            Template::Text { name, source } => {
                Ok(Value::String(self.render_named(name, source, ctx)?))
            }
            Template::Typed { name, source, path } => {
                // The common case (`{{ event.ticket.id }}`): the value as it
                // is in the context. minijinja would convert the context to
                // its values, then the result to JSON text and back, for the
                // same value; anything else (a missing part, a limit) goes
                // that way, so errors and their wording stay minijinja's.
                if *path {
                    if let Some(v) = plain_path(source).and_then(|p| lookup(p, ctx)) {
                        return Ok(v.clone());
                    }
                }
                let json = self.render_named(name, source, ctx)?;
                serde_json::from_str(&json)
                    .map_err(|e| TemplateError(format!("expression did not render to JSON: {e}")))
            }
        }
    }

    /// Render a template to text (JSON values other than strings are written as JSON).
    pub fn render_string(&self, t: &Template, ctx: &Value) -> Result<String, TemplateError> {
        match t {
            Template::Literal(s) => Ok(s.clone()),
            Template::Text { name, source } => self.render_named(name, source, ctx),
            Template::Typed { .. } => Ok(match self.render(t, ctx)? {
                Value::String(s) => s,
                Value::Null => String::new(),
                other => other.to_string(),
            }),
        }
    }

    pub fn render_value(&self, t: &ValueTemplate, ctx: &Value) -> Result<Value, TemplateError> {
        Ok(match t {
            ValueTemplate::Literal(v) => v.clone(),
            ValueTemplate::String(s) => self.render(s, ctx)?,
            ValueTemplate::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| self.render_value(i, ctx))
                    .collect::<Result<_, _>>()?,
            ),
            ValueTemplate::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), self.render_value(v, ctx)?)))
                    .collect::<Result<_, TemplateError>>()?,
            ),
        })
    }

    fn render_named(&self, name: &str, source: &str, ctx: &Value) -> Result<String, TemplateError> {
        let t = self
            .env
            .get_template(self.aliases.get(name).map_or(name, String::as_str))?;
        let mut out = limits::Bounded::default();
        let err = match t.render_captured_to(ctx, &mut out) {
            Ok(_) => {
                return String::from_utf8(out.buf)
                    .map_err(|_| TemplateError("template rendered invalid UTF-8".into()))
            }
            Err(_) if out.overflowed => {
                format!("template output larger than {MAX_RENDER_BYTES} bytes")
            }
            Err(e) if e.kind() == ErrorKind::UndefinedError => {
                explain_undefined(source, ctx).unwrap_or_else(|| TemplateError::from(e).0)
            }
            Err(e) => TemplateError::from(e).0,
        };
        Err(TemplateError(match self.origins.get(name) {
            Some(at) => format!("{err} at {at}"),
            None => err,
        }))
    }

    /// The variables a template reads from its context, dotted
    /// (`event.ticket.id`, `steps.contact.id`), for load-time reference checks.
    pub fn variables(&self, t: &Template) -> BTreeSet<String> {
        match t {
            Template::Literal(_) => BTreeSet::new(),
            Template::Text { source, .. } | Template::Typed { source, .. } => {
                // A panic while holding the lock leaves a map of valid entries.
                let mut cache = self.variables.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(vars) = cache.get(source.as_str()) {
                    return vars.clone();
                }
                let globals: BTreeSet<&str> = self.env.globals().map(|(n, _)| n).collect();
                // The author's text, not the compiled one (whose guarded
                // chains read as `_sb_opt(a, 'b', 'c')`).
                let vars: BTreeSet<String> = PLAIN
                    .template_from_str(source)
                    .map(|t| {
                        t.undeclared_variables(true)
                            .into_iter()
                            // Functions (`now()`, `range()`) are globals, not context.
                            .filter(|v| !globals.contains(v.split('.').next().unwrap_or("")))
                            .collect()
                    })
                    .unwrap_or_default();
                cache.insert(source.clone(), vars.clone());
                vars
            }
        }
    }

    /// Every template in a value with its pointer relative to the value.
    pub fn leaves<'a>(
        &self,
        t: &'a ValueTemplate,
        prefix: String,
        out: &mut Vec<(String, &'a Template)>,
    ) {
        match t {
            ValueTemplate::Literal(_) => {}
            ValueTemplate::String(s) => out.push((prefix, s)),
            ValueTemplate::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    self.leaves(v, format!("{prefix}/{i}"), out);
                }
            }
            ValueTemplate::Object(fields) => {
                for (k, v) in fields {
                    self.leaves(v, format!("{prefix}/{}", escape(k)), out);
                }
            }
        }
    }
}

/// An environment with no templates, to read the author's text of a
/// template (its variables) apart from its compiled form.
static PLAIN: std::sync::LazyLock<Environment<'static>> =
    std::sync::LazyLock::new(Environment::new);

/// The function guarded chains are compiled into ([`guard_chains`]).
const OPT: &str = "_sb_opt";

/// `_sb_opt(a, 'b', 'c')`: `a.b.c`, or undefined when any part of the way
/// is missing or null (where `a.b.c` would fail on the missing `b`).
fn opt(base: minijinja::Value, path: minijinja::value::Rest<minijinja::Value>) -> minijinja::Value {
    let mut v = base;
    for seg in path.iter() {
        if v.is_undefined() || v.is_none() {
            return minijinja::Value::UNDEFINED;
        }
        v = v.get_item(seg).unwrap_or(minijinja::Value::UNDEFINED);
    }
    v
}

/// Names that start no variable chain.
const KEYWORDS: &[&str] = &[
    "and", "or", "not", "in", "is", "if", "else", "true", "false", "none", "True", "False", "None",
];

/// Rewrite the chains authors guard with a fallback, so the fallback works
/// when a *parent* is missing: `a.b.c | default('x')`, `a.b.c | d('x')`,
/// `a.b.c is defined` / `is not defined` / `is undefined` become
/// `_sb_opt(a, 'b', 'c') | default('x')` … . In SemiStrict mode (which
/// keeps printing an undefined value an error) minijinja fails on looking
/// up `c` in the undefined `b` before `default` is reached; Jinja2 does the
/// same. Only chains of two lookups or more (`.name`, `[0]`, `['key']`)
/// directly before such a guard are rewritten; every other use stays strict.
/// Also returns the dotted chains it guarded (`a.b.c`).
fn guard_chains(source: &str) -> (String, Vec<String>) {
    let b = source.as_bytes();
    let ident_start = |c: u8| c.is_ascii_alphabetic() || c == b'_';
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let ident_end = |mut i: usize| {
        while i < b.len() && ident(b[i]) {
            i += 1;
        }
        i
    };
    let spaces = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let word_at = |i: usize, w: &str| {
        source[i..].starts_with(w) && b.get(i + w.len()).is_none_or(|&c| !ident(c))
    };
    let mut out = String::with_capacity(source.len());
    let mut guarded = Vec::new();
    let (mut i, mut copied, mut in_block) = (0, 0, false);
    // The last byte before `i` that is not white space.
    let mut prev: u8 = b' ';
    while i < b.len() {
        if !in_block {
            if b[i] == b'{' && matches!(b.get(i + 1), Some(b'{' | b'%')) {
                in_block = true;
                prev = b' ';
                i += 2;
            } else if b[i] == b'{' && b.get(i + 1) == Some(&b'#') {
                i = source[i..].find("#}").map_or(b.len(), |e| i + e + 2);
            } else {
                i += 1;
            }
            continue;
        }
        let c = b[i];
        if matches!(c, b'}' | b'%') && b.get(i + 1) == Some(&b'}') {
            in_block = false;
            i += 2;
            continue;
        }
        if c == b'"' || c == b'\'' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            prev = c;
            continue;
        }
        // Not a chain's root: inside a word, an attribute (`.name`), a filter (`| name`).
        if !ident_start(c) || matches!(prev, b'.' | b'|') || (i > 0 && ident(b[i - 1])) {
            if !c.is_ascii_whitespace() {
                prev = c;
            }
            i += 1;
            continue;
        }
        // A chain: root, then `.name`, `[digits]` or `['key']` lookups.
        let start = i;
        let root_end = ident_end(i);
        let root = &source[start..root_end];
        let mut args: Vec<String> = Vec::new();
        let mut dotted = root.to_string();
        let mut plain = true;
        let mut j = root_end;
        loop {
            if b.get(j) == Some(&b'.') && b.get(j + 1).is_some_and(|&c| ident_start(c)) {
                let e = ident_end(j + 1);
                args.push(format!("'{}'", &source[j + 1..e]));
                dotted.push_str(&source[j..e]);
                j = e;
            } else if b.get(j) == Some(&b'[') {
                let inner = j + 1;
                let close = source[inner..].find(']').map(|e| inner + e);
                let lit = close.map(|e| source[inner..e].trim());
                let ok = lit.is_some_and(|l| {
                    (!l.is_empty() && l.bytes().all(|c| c.is_ascii_digit()))
                        || (l.len() >= 2
                            && (l.starts_with('\'') && l.ends_with('\'')
                                || l.starts_with('"') && l.ends_with('"'))
                            && !l[1..l.len() - 1].contains(['\'', '"', '\\']))
                });
                match (ok, lit, close) {
                    (true, Some(l), Some(e)) => {
                        args.push(l.to_string());
                        plain = false; // not a dotted name any more
                        j = e + 1;
                    }
                    _ => {
                        args.clear(); // an expression subscript: leave the chain alone
                        break;
                    }
                }
            } else {
                break;
            }
        }
        let k = spaces(j);
        let guard = if b.get(k) == Some(&b'|') {
            let f = spaces(k + 1);
            word_at(f, "default") || word_at(f, "d")
        } else if word_at(k, "is") {
            let mut t = spaces(k + 2);
            if word_at(t, "not") {
                t = spaces(t + 3);
            }
            word_at(t, "defined") || word_at(t, "undefined")
        } else {
            false
        };
        if guard && args.len() >= 2 && !KEYWORDS.contains(&root) && b.get(j) != Some(&b'(') {
            out.push_str(&source[copied..start]);
            out.push_str(&format!("{OPT}({root}, {})", args.join(", ")));
            copied = j;
            if plain {
                guarded.push(dotted);
            }
        }
        prev = b'a';
        i = j.max(i + 1);
    }
    out.push_str(&source[copied..]);
    (out, guarded)
}

/// Why rendering `source` over `ctx` met an undefined value, in the author's
/// terms: the first variable it reads (in the order of the text) that `ctx`
/// lacks, and the deepest part of it that exists — "`event.ticket.requester.name`
/// is undefined (the event has `event.ticket` but no `requester`)". Chains
/// read under a guard (`| default`) are not the cause and are passed over.
fn explain_undefined(source: &str, ctx: &Value) -> Option<String> {
    let template = PLAIN.template_from_str(source).ok()?;
    let (_, guarded) = guard_chains(source);
    let mut vars: Vec<String> = template
        .undeclared_variables(true)
        .into_iter()
        .filter(|v| !guarded.contains(v))
        .collect();
    vars.sort_by_key(|v| source.find(v.as_str()).unwrap_or(usize::MAX));
    vars.iter().find_map(|v| missing_part(v, ctx))
}

/// What of the dotted variable `var` is missing from `ctx`, if anything.
fn missing_part(var: &str, ctx: &Value) -> Option<String> {
    let segs: Vec<&str> = var.split('.').collect();
    let mut cur = ctx;
    for (i, seg) in segs.iter().enumerate() {
        let parent = segs[..i].join(".");
        let why = match cur {
            Value::Object(m) => match m.get(*seg) {
                Some(v) => {
                    cur = v;
                    continue;
                }
                // The root itself: a name the context lacks (checked at load).
                None if i == 0 => return None,
                None if i == 1 && parent == "event" => format!("the event has no `{seg}`"),
                None if i == 1 && parent == "steps" => {
                    format!("step `{seg}` has not run in this run")
                }
                None if segs[0] == "event" => {
                    format!("the event has `{parent}` but no `{seg}`")
                }
                None => format!("`{parent}` has no `{seg}`"),
            },
            Value::Null => format!("`{parent}` is null"),
            Value::Array(_) => format!("`{parent}` is a list, not a mapping"),
            Value::String(_) => format!("`{parent}` is a string, not a mapping"),
            Value::Number(_) => format!("`{parent}` is a number, not a mapping"),
            Value::Bool(_) => format!("`{parent}` is a boolean, not a mapping"),
        };
        return Some(format!("`{var}` is undefined ({why})"));
    }
    None
}

/// The auto-escape mode of path templates.
const PATH_ESCAPE: &str = "path-segment";

/// Print `value` percent-encoded as one URL path segment: everything but
/// RFC 3986 unreserved characters is encoded, and `.` / `..` are refused
/// (URL parsers resolve them, even encoded, as dot segments).
fn write_path_segment(
    out: &mut minijinja::Output<'_>,
    value: &minijinja::Value,
) -> Result<(), minijinja::Error> {
    use std::fmt::Write as _;
    let text = value.to_string();
    if text == "." || text == ".." {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("`{text}` is not allowed as a path segment"),
        ));
    }
    let fail = |_| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "write failed");
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.write_char(b as char).map_err(fail)?;
        } else {
            write!(out, "%{b:02X}").map_err(fail)?;
        }
    }
    Ok(())
}

/// Names of `kind` offered as "did you mean" (each checked to exist
/// before it is offered): the reference's (not their aliases).
fn hints(kind: reference::Kind) -> impl Iterator<Item = &'static str> {
    reference::REFERENCE
        .iter()
        .filter(move |e| e.kind == kind)
        .map(|e| e.name)
}

impl Templates {
    /// Filters (`| defualt`) and tests (`is defnied`) a template names that
    /// are not defined, as (byte offset in the source, message), for
    /// load-time checks: minijinja would only fail on them when rendering.
    pub fn unknown_names(&self, t: &Template) -> Vec<(usize, String)> {
        let source = match t {
            Template::Literal(_) => return Vec::new(),
            Template::Text { source, .. } | Template::Typed { source, .. } => source,
        };
        let mut out = Vec::new();
        for (at, name, kind) in filter_and_test_names(source) {
            if kind == Name::Method {
                let filter = self.has_filter(&name);
                out.push((
                    at,
                    format!(
                        "unknown template function `.{name}()`: values have no methods here{}",
                        if filter {
                            format!(", expected a filter: `| {name}`")
                        } else {
                            ", expected a filter (`| name`)".into()
                        }
                    ),
                ));
                continue;
            }
            let is_test = kind == Name::Test;
            let (kind, known): (&str, fn(&Self, &str) -> bool) = if is_test {
                ("test", Self::has_test)
            } else {
                ("filter", Self::has_filter)
            };
            if known(self, &name) {
                continue;
            }
            let kind_of = if is_test {
                reference::Kind::Test
            } else {
                reference::Kind::Filter
            };
            let near = crate::yaml::did_you_mean(&name, hints(kind_of).filter(|h| known(self, h)));
            out.push((
                at,
                format!(
                    "unknown template {kind} `{name}`{}",
                    near.map(|n| format!("; did you mean `{n}`?"))
                        .unwrap_or_default()
                ),
            ));
        }
        out
    }

    fn has_filter(&self, name: &str) -> bool {
        !matches!(
            self.env.render_str(&format!("{{{{ 1 | {name} }}}}"), ()),
            Err(e) if e.kind() == ErrorKind::UnknownFilter
        )
    }

    fn has_test(&self, name: &str) -> bool {
        !matches!(
            self.env.render_str(&format!("{{{{ 1 is {name} }}}}"), ()),
            Err(e) if e.kind() == ErrorKind::UnknownTest
        )
    }
}

/// `what: e` at the place of the syntax error inside `source` (the string
/// at `ptr`), or at the string when the error has no place.
fn compile_error(
    map: &SourceMap,
    ptr: &str,
    source: &str,
    what: &str,
    e: &TemplateError,
) -> LoadError {
    let msg = format!("{what}: {e}");
    match syntax_error_offset(source) {
        Some(at) => map.error_inside(ptr, source, at, msg),
        None => map.error(ptr, msg),
    }
}

/// Where in `source` its syntax error is (byte offset), to point inside the
/// string that holds it.
pub fn syntax_error_offset(source: &str) -> Option<usize> {
    let e = Environment::new().template_from_str(source).err()?;
    e.range().map(|r| r.start).or_else(|| {
        let line = e.line()?;
        Some(
            source
                .split_inclusive('\n')
                .take(line.saturating_sub(1))
                .map(str::len)
                .sum(),
        )
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Filter,
    Test,
    /// `x.name(…)`: a method call, which our values do not have.
    Method,
}

/// The filter names (after `|`), test names (after `is` / `is not`) and
/// method calls (`.name(`) in the `{{ }}` and `{% %}` blocks of `source`,
/// with their byte offsets; string literals and `{# #}` comments are skipped.
fn filter_and_test_names(source: &str) -> Vec<(usize, String, Name)> {
    let b = source.as_bytes();
    let ident = |mut i: usize| -> (usize, usize) {
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        (start, i)
    };
    let mut out = Vec::new();
    let mut i = 0;
    let mut in_block = false;
    while i < b.len() {
        if !in_block {
            if b[i] == b'{' && i + 1 < b.len() && (b[i + 1] == b'{' || b[i + 1] == b'%') {
                in_block = true;
                i += 2;
            } else if b[i] == b'{' && i + 1 < b.len() && b[i + 1] == b'#' {
                i = source[i..].find("#}").map_or(b.len(), |e| i + e + 2);
            } else {
                i += 1;
            }
            continue;
        }
        match b[i] {
            b'}' | b'%' if i + 1 < b.len() && b[i + 1] == b'}' => {
                in_block = false;
                i += 2;
            }
            q @ (b'"' | b'\'') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'|' => {
                let (s, e) = ident(i + 1);
                if e > s {
                    out.push((s, source[s..e].to_string(), Name::Filter));
                }
                i = e.max(i + 1);
            }
            b'.' if i + 1 < b.len() && (b[i + 1].is_ascii_alphabetic() || b[i + 1] == b'_') => {
                let (s, e) = ident(i + 1);
                // `loop.cycle(…)` and `loop.changed(…)` are the one object with methods.
                if b.get(e) == Some(&b'(') && !source[..i].ends_with("loop") {
                    out.push((i, source[s..e].to_string(), Name::Method));
                }
                i = e;
            }
            c if c.is_ascii_alphanumeric() || c == b'_' => {
                let (s, e) = ident(i);
                if &source[s..e] == "is" {
                    let (mut ns, mut ne) = ident(e);
                    if &source[ns..ne] == "not" {
                        (ns, ne) = ident(ne);
                    }
                    if ne > ns {
                        out.push((ns, source[ns..ne].to_string(), Name::Test));
                    }
                    i = ne.max(e);
                } else {
                    i = e;
                }
            }
            _ => i += 1,
        }
    }
    out
}

fn calendar_arguments(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for f in [
        "within_business_hours",
        "next_business_open",
        "business_hours_after",
    ] {
        for (i, _) in source.match_indices(f) {
            let rest = source[i + f.len()..].trim_start();
            let Some(rest) = rest.strip_prefix('(') else {
                continue;
            };
            let rest = rest.trim_start();
            let Some(q) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') else {
                continue;
            };
            if let Some(end) = rest[1..].find(q) {
                out.push(rest[1..1 + end].to_string());
            }
        }
    }
    out
}

fn time_error(e: time::TimeError) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, e.0)
}

fn json(v: &minijinja::Value) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// The run's "now" from the context (`run.now`, milliseconds), set by the
/// engine from its clock.
fn context_now(state: &State) -> Result<jiff::Timestamp, minijinja::Error> {
    let now = state
        .lookup("run")
        .and_then(|r| r.get_attr("now").ok())
        .filter(|v| !v.is_undefined() && !v.is_none());
    let Some(now) = now else {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "now() is not available here (the context has no `run.now`)",
        ));
    };
    time::instant(&json(&now)).map_err(time_error)
}

/// The instant a business-hours function looks at: its `at` argument, or now.
fn at_or_now(
    state: &State,
    at: Option<minijinja::Value>,
) -> Result<jiff::Timestamp, minijinja::Error> {
    match at {
        Some(v) if !v.is_undefined() && !v.is_none() => {
            time::instant(&json(&v)).map_err(time_error)
        }
        _ => context_now(state),
    }
}

fn register_time(env: &mut Environment<'static>, calendars: &Arc<OnceLock<Calendars>>) {
    env.add_function("now", |state: &State| -> Result<String, minijinja::Error> {
        let now = context_now(state)?;
        Ok(time::rfc3339(&now.to_zoned(jiff::tz::TimeZone::UTC)))
    });
    env.add_filter(
        "in_tz",
        |v: minijinja::Value, zone: String| -> Result<String, minijinja::Error> {
            let tz = time::zone(&zone).map_err(time_error)?;
            let ts = time::instant(&json(&v)).map_err(time_error)?;
            Ok(time::rfc3339(&ts.to_zoned(tz)))
        },
    );
    env.add_filter(
        "weekday",
        |v: minijinja::Value| -> Result<String, minijinja::Error> {
            let z = time::zoned(&json(&v)).map_err(time_error)?;
            Ok(format!("{:?}", z.weekday()))
        },
    );
    env.add_filter(
        "format_date",
        |v: minijinja::Value,
         format: String,
         zone: Option<String>|
         -> Result<String, minijinja::Error> {
            let mut z = time::zoned(&json(&v)).map_err(time_error)?;
            if let Some(name) = zone {
                z = z.with_time_zone(time::zone(&name).map_err(time_error)?);
            }
            let mut out = String::new();
            jiff::fmt::strtime::format(format.as_str(), &z)
                .map(|s| out.push_str(&s))
                .map_err(|e| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        format!("format_date(\"{format}\"): {e}"),
                    )
                })?;
            Ok(out)
        },
    );
    env.add_filter(
        "parse_date",
        |v: minijinja::Value, format: Option<String>| -> Result<String, minijinja::Error> {
            let ts = match format {
                None => time::instant(&json(&v)).map_err(time_error)?,
                Some(f) => {
                    let text = v.to_string();
                    let parsed = jiff::fmt::strtime::parse(f.as_str(), &text).map_err(|e| {
                        minijinja::Error::new(
                            ErrorKind::InvalidOperation,
                            format!("parse_date(\"{f}\"): cannot read `{text}`: {e}"),
                        )
                    })?;
                    parsed
                        .to_timestamp()
                        .or_else(|_| {
                            parsed
                                .to_datetime()
                                .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC))
                                .map(|z| z.timestamp())
                        })
                        .map_err(|e| {
                            minijinja::Error::new(
                                ErrorKind::InvalidOperation,
                                format!("parse_date(\"{f}\"): `{text}` is not a complete date-time: {e}"),
                            )
                        })?
                }
            };
            Ok(time::rfc3339(&ts.to_zoned(jiff::tz::TimeZone::UTC)))
        },
    );
    env.add_filter(
        "date_add",
        |v: minijinja::Value, span: String| -> Result<String, minijinja::Error> {
            let z = time::zoned(&json(&v)).map_err(time_error)?;
            Ok(time::rfc3339(&time::add(&z, &span).map_err(time_error)?))
        },
    );
    env.add_filter(
        "timestamp_ms",
        |v: minijinja::Value| -> Result<i64, minijinja::Error> {
            Ok(time::instant(&json(&v))
                .map_err(time_error)?
                .as_millisecond())
        },
    );
    let cals = calendars.clone();
    let lookup = move |name: &str| -> Result<Arc<time::Calendar>, minijinja::Error> {
        let empty = Calendars::new();
        let all = cals.get().unwrap_or(&empty);
        all.get(name)
            .cloned()
            .ok_or_else(|| time_error(time::calendar::unknown(name, all)))
    };
    let find = lookup.clone();
    env.add_function(
        "within_business_hours",
        move |state: &State,
              name: String,
              at: Option<minijinja::Value>|
              -> Result<bool, minijinja::Error> {
            Ok(find(&name)?.is_open(at_or_now(state, at)?))
        },
    );
    let find_after = lookup.clone();
    env.add_function(
        "business_hours_after",
        move |state: &State,
              name: String,
              duration: String,
              at: Option<minijinja::Value>|
              -> Result<String, minijinja::Error> {
            let cal = find_after(&name)?;
            let ms = time::parse_duration(&duration, time::MAX_WAIT_MS).map_err(time_error)?;
            let due = cal
                .add_open_time(at_or_now(state, at)?, ms)
                .ok_or_else(|| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        format!("calendar `{name}` is not open for {duration} within two years"),
                    )
                })?;
            Ok(time::rfc3339(&due.to_zoned(cal.zone().clone())))
        },
    );
    env.add_function(
        "next_business_open",
        move |state: &State,
              name: String,
              at: Option<minijinja::Value>|
              -> Result<String, minijinja::Error> {
            let cal = lookup(&name)?;
            let open = cal.next_open(at_or_now(state, at)?).ok_or_else(|| {
                minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("calendar `{name}` does not open within two years"),
                )
            })?;
            Ok(time::rfc3339(&open.to_zoned(cal.zone().clone())))
        },
    );
}

/// If `source` is exactly `{{ expr }}` (surrounding whitespace allowed), the expression.
fn single_expression(source: &str) -> Option<&str> {
    let inner = source.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.trim_start_matches('-').trim_end_matches('-');
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
        return None;
    }
    Some(inner.trim())
}

/// Every filter, test and function a template may use, with what it
/// gives: the list `switchboard docs` writes into the README, and the
/// names `check` offers as "did you mean". A test holds it equal to what
/// the registry answers to (each entry is registered; each name this file
/// registers and each global function is listed), so it cannot drift.
pub mod reference {
    /// What a name is in a template.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        /// `x | name(…)`
        Filter,
        /// `x is name`
        Test,
        /// `name(…)`
        Function,
    }

    /// Where the README lists an entry.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Group {
        /// The "Templates" section.
        General,
        /// "Time, dates and business hours".
        Time,
    }

    /// One filter, test or function.
    #[derive(Debug, Clone, Copy)]
    pub struct Entry {
        pub name: &'static str,
        /// Other names of the same thing.
        pub aliases: &'static [&'static str],
        pub kind: Kind,
        pub group: Group,
        /// How it is written.
        pub usage: &'static str,
        pub gives: &'static str,
    }

    const fn e(
        name: &'static str,
        aliases: &'static [&'static str],
        kind: Kind,
        group: Group,
        usage: &'static str,
        gives: &'static str,
    ) -> Entry {
        Entry {
            name,
            aliases,
            kind,
            group,
            usage,
            gives,
        }
    }

    use Group::{General as G, Time as T};
    use Kind::{Filter as F, Function as Fun, Test as Te};

    pub const REFERENCE: &[Entry] = &[
        // Filters: minijinja's own (builtins), then ours.
        e("default", &["d"], F, G, "x | default('there')", "`x`, or the fallback when `x` is missing (a missing or null parent counts: `a.b.c`); `default('there', true)` also when `x` is null, false or empty"),
        e("lower", &[], F, G, "x | lower", "the text in lower case"),
        e("upper", &[], F, G, "x | upper", "the text in upper case"),
        e("title", &[], F, G, "x | title", "Each Word Capitalised"),
        e("capitalize", &[], F, G, "x | capitalize", "The first letter upper case, the rest lower case"),
        e("trim", &[], F, G, "x | trim / trim('-')", "the text without surrounding whitespace (or those characters)"),
        e("replace", &[], F, G, "x | replace('a', 'b')", "the text with every `a` replaced by `b`"),
        e("split", &[], F, G, "x | split(',')", "a list of the parts (split on whitespace without an argument)"),
        e("lines", &[], F, G, "x | lines", "a list of the text's lines"),
        e("join", &[], F, G, "list | join(', ')", "the items as one text, separated"),
        e("length", &["count"], F, G, "x | length", "the number of items, keys or characters"),
        e("first", &[], F, G, "list | first", "the first item"),
        e("last", &[], F, G, "list | last", "the last item"),
        e("min", &[], F, G, "list | min", "the smallest item"),
        e("max", &[], F, G, "list | max", "the largest item"),
        e("sum", &[], F, G, "list | sum / sum(attribute='n')", "the sum of the items (or of an attribute of each)"),
        e("sort", &[], F, G, "list | sort / sort(attribute='name', reverse=true)", "the items sorted"),
        e("reverse", &[], F, G, "x | reverse", "the items (or characters) in reverse order"),
        e("unique", &[], F, G, "list | unique", "the items without repeats"),
        e("list", &[], F, G, "x | list", "a list of the items (of a text: its characters; of a mapping: its keys)"),
        e("items", &[], F, G, "mapping | items", "a list of `[key, value]` pairs"),
        e("dictsort", &[], F, G, "mapping | dictsort", "`[key, value]` pairs sorted by key"),
        e("map", &[], F, G, "list | map(attribute='email') / map('upper')", "each item's attribute, or each item through a filter"),
        e("select", &[], F, G, "list | select('odd')", "the items that pass a test (truthy ones without an argument)"),
        e("reject", &[], F, G, "list | reject('none')", "the items that fail a test"),
        e("selectattr", &[], F, G, "list | selectattr('vip')", "the items whose attribute passes a test (is truthy)"),
        e("rejectattr", &[], F, G, "list | rejectattr('closed')", "the items whose attribute fails a test"),
        e("groupby", &[], F, G, "list | groupby('team')", "the items grouped by an attribute: `[{grouper, list}]`"),
        e("batch", &[], F, G, "list | batch(3)", "the items in lists of that many"),
        e("slice", &[], F, G, "list | slice(3)", "the items split into that many lists"),
        e("chain", &[], F, G, "a | chain(b)", "one list of both lists' items"),
        e("zip", &[], F, G, "a | zip(b)", "a list of pairs of the lists' items"),
        e("attr", &[], F, G, "x | attr('name')", "the attribute of that name"),
        e("int", &[], F, G, "x | int", "a whole number (from a numeric text too)"),
        e("float", &[], F, G, "x | float", "a number with decimals"),
        e("round", &[], F, G, "x | round / round(2)", "the number rounded (to that many decimals)"),
        e("abs", &[], F, G, "x | abs", "the number without its sign"),
        e("bool", &[], F, G, "x | bool", "`true` or `false`"),
        e("string", &[], F, G, "x | string", "the value as text"),
        e("format", &[], F, G, "'%s-%d' | format(a, 1)", "printf-style formatting"),
        e("indent", &[], F, G, "x | indent(2)", "the text with every line but the first indented"),
        e("tojson", &[], F, G, "x | tojson", "the value as JSON text"),
        e("pprint", &[], F, G, "x | pprint", "the value as readable text, for debugging"),
        e("urlencode", &[], F, G, "x | urlencode", "the text (or a mapping as `a=1&b=2`) percent-encoded for a URL"),
        e("escape", &["e"], F, G, "x | escape", "the text HTML-escaped (templates do not escape on their own)"),
        e("safe", &[], F, G, "x | safe", "the text marked as not to be escaped"),
        e("detect_language", &[], F, G, "text | detect_language / detect_language(only=['en', 'de'])", "`{code, iso639_3, name, confidence, reliable}` of the text's language, offline (see below)"),
        e("in_tz", &[], F, T, "x | in_tz(\"Europe/Berlin\")", "the same instant in that zone's local time"),
        e("weekday", &[], F, T, "x | weekday", "`Monday` … `Sunday`, in the value's own offset (use after `in_tz`)"),
        e("format_date", &[], F, T, "x | format_date(\"%A %H:%M\", \"Europe/Berlin\")", "strftime formatting; the zone is optional"),
        e("parse_date", &[], F, T, "x | parse_date / parse_date(\"%d.%m.%Y %H:%M %z\")", "a date read from text, as RFC 3339 UTC"),
        e("date_add", &[], F, T, "x | date_add(\"3d\") / date_add(\"-2h\")", "arithmetic; days are calendar days in the value's zone"),
        e("timestamp_ms", &[], F, T, "x | timestamp_ms", "milliseconds since 1970, for numeric comparisons"),
        // Tests.
        e("defined", &[], Te, G, "x is defined", "`x` exists (a missing parent counts as missing: `a.b.c is defined`)"),
        e("undefined", &[], Te, G, "x is undefined", "`x` does not exist"),
        e("none", &[], Te, G, "x is none", "`x` is null"),
        e("true", &[], Te, G, "x is true", "`x` is `true`"),
        e("false", &[], Te, G, "x is false", "`x` is `false`"),
        e("boolean", &[], Te, G, "x is boolean", "`x` is `true` or `false`"),
        e("number", &[], Te, G, "x is number", "`x` is a number"),
        e("integer", &["int"], Te, G, "x is integer", "`x` is a whole number"),
        e("float", &[], Te, G, "x is float", "`x` is a number with decimals"),
        e("string", &[], Te, G, "x is string", "`x` is a text"),
        e("sequence", &[], Te, G, "x is sequence", "`x` is a list"),
        e("mapping", &[], Te, G, "x is mapping", "`x` is a mapping"),
        e("iterable", &[], Te, G, "x is iterable", "`x` can be looped over"),
        e("odd", &[], Te, G, "x is odd", "`x` is an odd number"),
        e("even", &[], Te, G, "x is even", "`x` is an even number"),
        e("divisibleby", &[], Te, G, "x is divisibleby(3)", "`x` divides evenly"),
        e("eq", &["equalto", "=="], Te, G, "x is eq(1)", "`x` equals the argument (for `select`)"),
        e("ne", &["!="], Te, G, "x is ne(1)", "`x` does not equal the argument"),
        e("lt", &["lessthan", "<"], Te, G, "x is lt(5)", "`x` is less"),
        e("le", &["<="], Te, G, "x is le(5)", "`x` is less or equal"),
        e("gt", &["greaterthan", ">"], Te, G, "x is gt(5)", "`x` is greater"),
        e("ge", &[">="], Te, G, "x is ge(5)", "`x` is greater or equal"),
        e("in", &[], Te, G, "x is in(['a', 'b'])", "`x` is one of the items"),
        e("startingwith", &[], Te, G, "x is startingwith('ACME-')", "the text starts so"),
        e("endingwith", &[], Te, G, "x is endingwith('.com')", "the text ends so"),
        e("lower", &[], Te, G, "x is lower", "the text is all lower case"),
        e("upper", &[], Te, G, "x is upper", "the text is all upper case"),
        e("sameas", &[], Te, G, "x is sameas(y)", "`x` is the very same object"),
        e("safe", &["escaped"], Te, G, "x is safe", "`x` is marked safe"),
        e("filter", &[], Te, G, "'upper' is filter", "a filter of that name exists"),
        e("test", &[], Te, G, "'odd' is test", "a test of that name exists"),
        // Functions.
        e("range", &[], Fun, G, "range(3) / range(1, 10, 2)", "a list of numbers"),
        e("dict", &[], Fun, G, "dict(a=1, b=2)", "a mapping"),
        e("namespace", &[], Fun, G, "namespace(total=0)", "an object whose attributes `{% set ns.total = … %}` can change inside a loop"),
        e("debug", &[], Fun, G, "debug()", "the template's context as text, for debugging"),
        e("now", &[], Fun, T, "now()", "the run's clock (`run.now`) in UTC; `switchboard test` pins it with `now:`"),
        e("within_business_hours", &[], Fun, T, "within_business_hours(\"support-eu\", at?)", "`true` while the calendar is open (at `at`, default now)"),
        e("next_business_open", &[], Fun, T, "next_business_open(\"support-eu\", at?)", "when it next opens (now, if open), in the calendar's zone"),
        e("business_hours_after", &[], Fun, T, "business_hours_after(\"support-eu\", \"12h\", at?)", "when that much business time has passed since `at` (default now), counting from the next opening, in the calendar's zone: \"due by …\""),
    ];
}

/// The segments of `source` when it is exactly `{{ a.b.c }}` (whitespace
/// and `-` trims allowed): names only, the first not a literal (`true`,
/// `none` …). Indexing (`a[0]`), filters, calls and operators are not plain.
fn plain_path(source: &str) -> Option<std::str::Split<'_, char>> {
    let expr = single_expression(source)?;
    let name = |s: &str| {
        let mut b = s.bytes();
        b.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
    };
    let root = expr.split('.').next()?;
    (expr.split('.').all(name) && !KEYWORDS.contains(&root)).then(|| expr.split('.'))
}

/// The value a plain path names in `ctx`, when minijinja would render the
/// very same value: each segment found in a mapping, and the value within
/// the render limits with room to spare (its JSON at most a sixth of
/// [`MAX_RENDER_BYTES`], since `tojson` writes a byte as at most six, and
/// nested at most [`PLAIN_DEPTH`] deep, below serde_json's parse limit of
/// 128). `None`: render through minijinja, which finds the same value or
/// words the error.
fn lookup<'a, 'p>(path: impl Iterator<Item = &'p str>, ctx: &'a Value) -> Option<&'a Value> {
    let mut cur = ctx;
    for seg in path {
        cur = cur.as_object()?.get(seg)?;
    }
    let bound = MAX_RENDER_BYTES / 6;
    let container =
        |items: usize| items <= MAX_ITEMS && shallow(cur, PLAIN_DEPTH) && json_within(cur, bound);
    let fits = match cur {
        Value::String(s) => s.len() + 2 <= bound,
        Value::Array(items) => container(items.len()),
        Value::Object(m) => container(m.len()),
        Value::Null | Value::Bool(_) | Value::Number(_) => true,
    };
    fits.then_some(cur)
}

/// How deep a value [`lookup`] answers may nest.
const PLAIN_DEPTH: usize = 100;

/// Whether `v` nests at most `depth` containers deep.
fn shallow(v: &Value, depth: usize) -> bool {
    match v {
        Value::Array(items) => depth > 0 && items.iter().all(|i| shallow(i, depth - 1)),
        Value::Object(m) => depth > 0 && m.values().all(|i| shallow(i, depth - 1)),
        _ => true,
    }
}

/// Whether `v`'s JSON is at most `bound` bytes (counted, not built).
fn json_within(v: &Value, bound: usize) -> bool {
    struct Count(usize, usize);
    impl std::io::Write for Count {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0 += data.len();
            if self.0 > self.1 {
                return Err(std::io::Error::other("over the bound"));
            }
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(&mut Count(0, bound), v).is_ok()
}

/// Memory bounds for rendering (see `Templates::new`).
mod limits {
    use minijinja::value::{Kwargs, Rest, Value};
    use minijinja::{Environment, Error, ErrorKind, State};

    /// Largest text one template renders (and largest JSON `tojson` builds).
    pub const MAX_RENDER_BYTES: usize = 1024 * 1024;
    /// Most items a filter may take in one sequence or map.
    pub const MAX_ITEMS: usize = 100_000;

    /// A `Vec` that refuses to grow past `MAX_RENDER_BYTES`.
    #[derive(Default)]
    pub struct Bounded {
        pub buf: Vec<u8>,
        pub overflowed: bool,
    }

    impl std::io::Write for Bounded {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            if self.buf.len() + data.len() > MAX_RENDER_BYTES {
                self.overflowed = true;
                return Err(std::io::Error::other("output too large"));
            }
            self.buf.extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn too_large(what: &str) -> Error {
        Error::new(ErrorKind::InvalidOperation, format!("{what} is too large"))
    }

    /// Refuse a string over `MAX_RENDER_BYTES` or a sequence / map over
    /// `MAX_ITEMS` (a repeated sequence knows its length without building it).
    pub fn check(v: &Value) -> Result<(), Error> {
        if let Some(s) = v.as_str() {
            if s.len() > MAX_RENDER_BYTES {
                return Err(too_large(&format!("a string of {} bytes", s.len())));
            }
        } else if let Some(n) = v.len() {
            if n > MAX_ITEMS {
                return Err(too_large(&format!(
                    "a sequence of {n} items (at most {MAX_ITEMS})"
                )));
            }
        }
        Ok(())
    }

    /// Wrap the builtin filters that build a new value from their input.
    pub fn install(env: &mut Environment<'static>) {
        use minijinja::filters as f;
        macro_rules! guard {
            ($($name:ident),* $(,)?) => {$(
                let inner = Value::from_function(f::$name);
                env.add_filter(stringify!($name), move |state: &State, args: Rest<Value>| {
                    args.iter().try_for_each(check)?;
                    inner.call(state, &args)
                });
            )*};
        }
        guard!(
            batch, capitalize, chain, dictsort, groupby, indent, items, join, last, lines, list,
            lower, map, max, min, pprint, reject, rejectattr, reverse, select, selectattr, slice,
            sort, split, string, sum, title, trim, unique, upper, urlencode, zip,
        );
        let inner = Value::from_function(f::replace);
        env.add_filter("replace", move |state: &State, args: Rest<Value>| {
            args.iter().try_for_each(check)?;
            if let [s, from, to, ..] = &args[..] {
                let (s, from, to) = (s.to_string(), from.to_string(), to.to_string());
                let hits = if from.is_empty() {
                    s.chars().count() + 1
                } else {
                    s.matches(from.as_str()).count()
                };
                if s.len().saturating_add(hits.saturating_mul(to.len())) > MAX_RENDER_BYTES {
                    return Err(too_large("the replaced string"));
                }
            }
            inner.call(state, &args)
        });
        env.add_filter("tojson", tojson);
    }

    fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
        check(value)?;
        let mut out = Bounded::default();
        if serde_json::to_writer(&mut out, value).is_err() && out.overflowed {
            return Err(too_large(&format!(
                "JSON of more than {MAX_RENDER_BYTES} bytes"
            )));
        }
        minijinja::filters::tojson(value, indent, kwargs)
    }
}

/// `detect_language`: offline language identification (whatlang's trigram
/// profiles, compiled into the binary), so a recipe asks a translation API
/// only for text that needs it. Pure: no I/O, bounded input.
mod language {
    use minijinja::value::{Kwargs, Value};
    use minijinja::{Error, ErrorKind};
    use whatlang::Lang;

    /// Only the first characters are looked at: enough for a reliable guess,
    /// and the cost of a call stays bounded whatever the ticket's length.
    pub const MAX_CHARS: usize = 4096;

    /// The ISO 639-1 code of each language whatlang knows (its own codes are ISO 639-3).
    fn iso639_1(lang: Lang) -> &'static str {
        match lang {
            Lang::Epo => "eo",
            Lang::Eng => "en",
            Lang::Rus => "ru",
            Lang::Cmn => "zh",
            Lang::Spa => "es",
            Lang::Por => "pt",
            Lang::Ita => "it",
            Lang::Ben => "bn",
            Lang::Fra => "fr",
            Lang::Deu => "de",
            Lang::Ukr => "uk",
            Lang::Kat => "ka",
            Lang::Ara => "ar",
            Lang::Hin => "hi",
            Lang::Jpn => "ja",
            Lang::Heb => "he",
            Lang::Yid => "yi",
            Lang::Pol => "pl",
            Lang::Amh => "am",
            Lang::Jav => "jv",
            Lang::Kor => "ko",
            Lang::Nob => "nb",
            Lang::Dan => "da",
            Lang::Swe => "sv",
            Lang::Fin => "fi",
            Lang::Tur => "tr",
            Lang::Nld => "nl",
            Lang::Hun => "hu",
            Lang::Ces => "cs",
            Lang::Ell => "el",
            Lang::Bul => "bg",
            Lang::Bel => "be",
            Lang::Mar => "mr",
            Lang::Kan => "kn",
            Lang::Ron => "ro",
            Lang::Slv => "sl",
            Lang::Hrv => "hr",
            Lang::Srp => "sr",
            Lang::Mkd => "mk",
            Lang::Lit => "lt",
            Lang::Lav => "lv",
            Lang::Est => "et",
            Lang::Tam => "ta",
            Lang::Vie => "vi",
            Lang::Urd => "ur",
            Lang::Tha => "th",
            Lang::Guj => "gu",
            Lang::Uzb => "uz",
            Lang::Pan => "pa",
            Lang::Aze => "az",
            Lang::Ind => "id",
            Lang::Tel => "te",
            Lang::Pes => "fa",
            Lang::Mal => "ml",
            Lang::Ori => "or",
            Lang::Mya => "my",
            Lang::Nep => "ne",
            Lang::Sin => "si",
            Lang::Khm => "km",
            Lang::Tuk => "tk",
            Lang::Aka => "ak",
            Lang::Zul => "zu",
            Lang::Sna => "sn",
            Lang::Afr => "af",
            Lang::Lat => "la",
            Lang::Slk => "sk",
            Lang::Cat => "ca",
            Lang::Tgl => "tl",
            Lang::Hye => "hy",
            Lang::Cym => "cy",
        }
    }

    /// A language by its ISO 639-1 or 639-3 code, any case, a region or
    /// script suffix ignored (`de`, `deu`, `de-AT`, `pt_BR`, `zh-Hant`).
    pub fn by_code(code: &str) -> Option<Lang> {
        let base = code
            .split(['-', '_'])
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        Lang::all()
            .iter()
            .copied()
            .find(|l| iso639_1(*l) == base || l.code() == base)
    }

    /// `{{ text | detect_language }}` → `{code, iso639_3, name, confidence,
    /// reliable}`; `code` is ISO 639-1 (`de`), `confidence` 0 to 1,
    /// `reliable` whatlang's own verdict (confidence above 0.9). Text with
    /// no letters to go by gives `code: "und"` (undetermined), confidence 0.
    /// `only=['en', 'de', 'fr']` restricts the guess to those languages
    /// (ISO 639-1 or 639-3 codes); an unknown code is an error naming it.
    pub fn detect_language(text: &Value, kwargs: Kwargs) -> Result<Value, Error> {
        let only: Option<Vec<String>> = kwargs.get("only")?;
        kwargs.assert_all_used()?;
        let detector = match only {
            None => whatlang::Detector::new(),
            Some(codes) => {
                let mut langs = Vec::new();
                for code in &codes {
                    langs.push(by_code(code).ok_or_else(|| {
                        Error::new(
                            ErrorKind::InvalidOperation,
                            format!(
                                "detect_language: unknown language code `{code}` in `only` (ISO 639-1 or 639-3 codes of the {} languages detected, e.g. en, de, fr, pt, zh)",
                                Lang::all().len()
                            ),
                        )
                    })?);
                }
                whatlang::Detector::with_allowlist(langs)
            }
        };
        let text = match text.as_str() {
            Some(s) => s.to_string(),
            None if text.is_undefined() || text.is_none() => String::new(),
            None => text.to_string(),
        };
        let head: String = text.chars().take(MAX_CHARS).collect();
        let out = match detector.detect(&head) {
            Some(info) => serde_json::json!({
                "code": iso639_1(info.lang()),
                "iso639_3": info.lang().code(),
                "name": info.lang().eng_name(),
                // Two decimals: enough to compare with a threshold, stable to print.
                "confidence": (info.confidence() * 100.0).round() / 100.0,
                "reliable": info.is_reliable(),
            }),
            None => serde_json::json!({
                "code": "und", "iso639_3": "und", "name": "Undetermined",
                "confidence": 0.0, "reliable": false,
            }),
        };
        Ok(Value::from_serialize(&out))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn every_language_has_a_two_letter_code_found_again_by_it() {
            for &l in Lang::all() {
                let code = iso639_1(l);
                assert_eq!(code.len(), 2, "{l:?}");
                assert_eq!(by_code(code), Some(l), "{code}");
                assert_eq!(by_code(l.code()), Some(l), "{}", l.code());
            }
            assert_eq!(by_code("de-AT"), Some(Lang::Deu));
            assert_eq!(by_code("pt_BR"), Some(Lang::Por));
            assert_eq!(by_code("xx-Klingon"), None);
            assert_eq!(by_code(""), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn render(src: &str, ctx: Value) -> Result<Value, TemplateError> {
        let mut t = Templates::new();
        let c = t.compile(src)?;
        t.render(&c, &ctx)
    }

    /// `t` compiled, and the same template forced through minijinja.
    fn fast_and_slow(t: &mut Templates, src: &str) -> (Template, Template) {
        let fast = t.compile(src).unwrap();
        t.set_origin(&fast, "recipes/x.yaml:3:5".into());
        let slow = match &fast {
            Template::Typed { name, source, .. } => Template::Typed {
                name: name.clone(),
                source: source.clone(),
                path: false,
            },
            other => other.clone(),
        };
        (fast, slow)
    }

    /// Renders `src` both ways over `ctx` and checks they agree, values and
    /// error messages alike (render and render_string).
    fn check_same(t: &mut Templates, src: &str, ctx: &Value) {
        let (fast, slow) = fast_and_slow(t, src);
        match (t.render(&fast, ctx), t.render(&slow, ctx)) {
            (Ok(f), Ok(s)) => assert!(same(&f, &s), "{src} over {ctx}: {f} != {s}"),
            (f, s) => assert_eq!(f.map_err(|e| e.0), s.map_err(|e| e.0), "{src} over {ctx}"),
        }
        match (t.render_string(&fast, ctx), t.render_string(&slow, ctx)) {
            (Ok(f), Ok(s)) if f != s => {
                let parse = |x: &str| serde_json::from_str::<Value>(x).unwrap();
                assert!(same(&parse(&f), &parse(&s)), "{src} over {ctx}: {f} != {s}");
            }
            (f, s) => assert_eq!(f.map_err(|e| e.0), s.map_err(|e| e.0), "{src} over {ctx}"),
        }
    }

    /// Equal, but for floats off by a unit or two in the last place: the
    /// slow path parses its JSON text back with serde_json, whose default
    /// float parser may round the last digit differently; the fast path
    /// keeps the value exactly as the context holds it.
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) if x.is_f64() && y.is_f64() => {
                let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
                (x - y).abs() <= x.abs().max(y.abs()) * 4.0 * f64::EPSILON
            }
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|((kx, x), (ky, y))| kx == ky && same(x, y))
            }
            _ => a == b,
        }
    }

    #[test]
    fn only_plain_paths_take_the_fast_path() {
        for src in [
            "{{ event.ticket.requester.email }}",
            "{{input.email}}",
            " {{- event -}} ",
            "{{ _x.a_1.B2 }}",
            "{{ event.items }}",
        ] {
            assert!(plain_path(src).is_some(), "{src}");
        }
        assert_eq!(
            plain_path("{{ a.b.c }}").unwrap().collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        for src in [
            "{{ event.tags[0] }}",
            "{{ event['a'] }}",
            "{{ event.a | default(1) }}",
            "{{ event.a | upper }}",
            "{{ event.a or 1 }}",
            "{{ event.a ~ 'x' }}",
            "{{ now() }}",
            "{{ event.a is defined }}",
            "{{ true }}",
            "{{ none }}",
            "{{ True }}",
            "{{ none.x }}",
            "{{ event.0 }}",
            "{{ event..a }}",
            "{{ event. a }}",
            "{{ .a }}",
            "{{ 1 }}",
            "{{ 'event.a' }}",
            "x {{ event.a }}",
            "{{ a }}{{ b }}",
            "{% if a %}{{ a }}{% endif %}",
            "event.a",
        ] {
            assert!(plain_path(src).is_none(), "{src}");
        }
        let mut t = Templates::new();
        let typed = |t: &Template| matches!(t, Template::Typed { path: true, .. });
        let plain = t.compile("{{ event.id }}").unwrap();
        let again = t.compile("{{ event.id }}").unwrap();
        let filtered = t.compile("{{ event.id | string }}").unwrap();
        assert!(typed(&plain) && typed(&again) && !typed(&filtered));
    }

    /// The fast path answers what minijinja answers: values of every JSON
    /// type, and for a missing part, a null or non-mapping parent, a value
    /// over a limit, the same error with its location; guarded and
    /// filtered expressions still go through minijinja.
    #[test]
    fn plain_paths_render_as_minijinja_does() {
        let ctx = json!({
            "event": {
                "ticket": {
                    "id": 7, "neg": -3, "big": u64::MAX, "small": i64::MIN,
                    "ratio": 0.5, "whole": 3.0, "exp": 1.5e300, "tiny": -2.5e-300,
                    "ok": true, "no": false, "nothing": null,
                    "subject": "Setup <b>&'\"\\ é 😀 \u{0}\n",
                    "empty": "", "tags": ["a", 1, null, {"x": [true]}], "none": [],
                    "requester": {"email": "ann@example.com", "name": "Ann"},
                    "obj": {}, "items": {"keys": 1},
                },
                "list": [1, 2, 3],
            },
            "steps": {"a": null, "b": {"id": "x"}},
            "input": {"email": "e@x", "n": 1},
            "vars": {},
            "range": 5,
            "run": {"now": 1_764_504_000_000i64},
        });
        let mut t = Templates::new();
        for src in [
            "{{ event }}",
            "{{ event.ticket }}",
            "{{ event.ticket.id }}",
            "{{event.ticket.neg}}",
            "{{ event.ticket.big }}",
            "{{ event.ticket.small }}",
            "{{ event.ticket.ratio }}",
            "{{ event.ticket.whole }}",
            "{{ event.ticket.exp }}",
            "{{ event.ticket.tiny }}",
            "{{ event.ticket.ok }}",
            "{{ event.ticket.no }}",
            "{{ event.ticket.nothing }}",
            "{{ event.ticket.subject }}",
            "{{ event.ticket.empty }}",
            "{{ event.ticket.tags }}",
            "{{ event.ticket.none }}",
            "{{ event.ticket.obj }}",
            "{{ event.ticket.items }}",
            "{{ event.ticket.items.keys }}",
            "{{ event.ticket.requester.email }}",
            "{{- event.ticket.requester.name -}}",
            "{{ input.email }}",
            "{{ input.n }}",
            "{{ steps.b.id }}",
            "{{ steps.a }}",
            "{{ vars }}",
            "{{ run.now }}",
            "{{ range }}",
            // Missing: the same errors, with their location.
            "{{ event.nope }}",
            "{{ event.ticket.nope }}",
            "{{ event.ticket.requester.phone }}",
            "{{ event.ticket.assignee.name }}",
            "{{ event.nope.deeper.name }}",
            "{{ steps.c.id }}",
            "{{ steps.a.id }}",
            "{{ event.ticket.nothing.x }}",
            "{{ event.ticket.id.x }}",
            "{{ event.ticket.subject.x }}",
            "{{ event.ticket.tags.x }}",
            "{{ event.list.first }}",
            "{{ event.ticket.ok.x }}",
            "{{ nothere }}",
            "{{ nothere.x }}",
            // Not plain: through minijinja both ways.
            "{{ event.ticket.assignee.name | default('x') }}",
            "{{ event.ticket.requester.name | default('there') }}",
            "{{ steps.a.id | default(0) }}",
            "{{ event.nope | default(none) }}",
            "{{ event.ticket.tags[1] }}",
            "{{ event.list[5] }}",
            "{{ event.ticket.subject | upper }}",
            "{{ event.ticket.id is defined }}",
        ] {
            check_same(&mut t, src, &ctx);
        }
        // Found without minijinja: present values within the limits.
        let found = |src: &str, ctx: &Value| plain_path(src).and_then(|p| lookup(p, ctx)).cloned();
        assert_eq!(found("{{ event.ticket.id }}", &ctx), Some(json!(7)));
        assert_eq!(found("{{ steps.a }}", &ctx), Some(Value::Null));
        assert_eq!(found("{{ event.ticket.nope }}", &ctx), None);
        assert_eq!(found("{{ event.list.first }}", &ctx), None);
        // Over a render limit: refused the same way.
        for big in [
            json!("x".repeat(MAX_RENDER_BYTES + 1)),
            json!("<".repeat(MAX_RENDER_BYTES / 5)),
            json!(vec![0; MAX_ITEMS + 1]),
            json!(vec!["<<<<<<<<<<"; MAX_RENDER_BYTES / 50]),
            json!("y".repeat(MAX_RENDER_BYTES / 6)),
        ] {
            check_same(&mut t, "{{ event.big }}", &json!({"event": {"big": big}}));
        }
        // Nested deeper than serde_json parses back.
        let mut deep = json!(1);
        for _ in 0..130 {
            deep = json!([deep]);
        }
        check_same(
            &mut t,
            "{{ event.deep }}",
            &json!({"event": {"deep": deep}}),
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            // Floats as senders write them, read by serde_json.
            (any::<i32>(), 1u32..12, -20i32..20).prop_map(|(m, d, e)| {
                let text = format!("{m}.{}e{e}", "5".repeat(d as usize));
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null)
            }),
            "[a-c<>&'\"\\\\é😀\u{0}\n ]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
                proptest::collection::btree_map(
                    proptest::sample::select(vec!["a", "b", "c", "items", "_x"]),
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any plain path over any context: the fast path and minijinja agree.
        #[test]
        fn plain_paths_agree_with_minijinja_on_any_context(
            event in arb_json(),
            steps in arb_json(),
            paths in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["event", "steps", "input"]),
                    proptest::collection::vec(
                        proptest::sample::select(vec!["a", "b", "c", "items", "_x"]),
                        0..4,
                    ),
                ),
                1..8,
            ),
        ) {
            let ctx = json!({"event": event, "steps": steps});
            let mut t = Templates::new();
            for (root, segs) in paths {
                let src = std::iter::once(root)
                    .chain(segs)
                    .collect::<Vec<_>>()
                    .join(".");
                check_same(&mut t, &format!("{{{{ {src} }}}}"), &ctx);
            }
        }
    }

    #[test]
    fn single_expressions_keep_their_type() {
        let ctx = json!({"event": {"id": 42, "tags": ["a", "b"], "name": "Ann"}});
        for (src, want) in [
            ("{{ event.id }}", json!(42)),
            (" {{ event.tags }} ", json!(["a", "b"])),
            ("{{ event.name }}", json!("Ann")),
            ("id {{ event.id }}", json!("id 42")),
            ("plain", json!("plain")),
        ] {
            assert_eq!(render(src, ctx.clone()).unwrap(), want, "{src}");
        }
    }

    /// A source repeated across recipes is registered with minijinja once
    /// (it keeps ~12 KiB per template), each use keeping its own name and
    /// origin; a path template of the same text is another template, since
    /// it escapes what it prints.
    /// The reference is what the registry answers to: every entry (and
    /// alias) is registered as its kind, every global function is listed,
    /// and so is every name this file registers itself.
    #[test]
    fn the_reference_lists_what_is_registered() {
        use reference::{Kind, REFERENCE};
        let t = Templates::new();
        let globals: Vec<&str> = t.env.globals().map(|(n, _)| n).collect();
        for e in REFERENCE {
            for name in std::iter::once(e.name).chain(e.aliases.iter().copied()) {
                let registered = match e.kind {
                    Kind::Filter => t.has_filter(name),
                    Kind::Test => t.has_test(name),
                    Kind::Function => globals.contains(&name),
                };
                assert!(
                    registered,
                    "{:?} `{name}` is listed but not registered",
                    e.kind
                );
            }
        }
        let listed = |kind: Kind, name: &str| {
            REFERENCE
                .iter()
                .any(|e| e.kind == kind && (e.name == name || e.aliases.contains(&name)))
        };
        for g in globals.iter().filter(|g| **g != OPT) {
            assert!(
                listed(Kind::Function, g),
                "function `{g}` is not in the reference"
            );
        }
        // This file's own registrations (`add_filter`, `add_function`,
        // `add_test` with a literal name), and the builtins `guard!` wraps.
        let source = include_str!("template.rs");
        let own = regex::Regex::new(r#"add_(filter|function|test)\(\s*"([a-z_0-9]+)""#).unwrap();
        let mut seen = 0;
        for c in own.captures_iter(source) {
            let kind = match &c[1] {
                "filter" => Kind::Filter,
                "test" => Kind::Test,
                _ => Kind::Function,
            };
            assert!(
                listed(kind, &c[2]),
                "`{}` is registered but not in the reference",
                &c[2]
            );
            seen += 1;
        }
        assert!(seen >= 10, "the scan finds the registrations ({seen})");
        let guarded = source
            .split("guard!(\n")
            .nth(1)
            .and_then(|rest| rest.split(");").next())
            .unwrap();
        for name in guarded.split([',', ' ', '\n']).filter(|n| !n.is_empty()) {
            assert!(
                listed(Kind::Filter, name),
                "`{name}` is wrapped but not in the reference"
            );
        }
    }

    #[test]
    fn a_repeated_source_is_registered_once() {
        let mut t = Templates::new();
        let a = t.compile("{{ event.id }}").unwrap();
        let b = t.compile("{{ event.id }}").unwrap();
        let text = t.compile("/x/{{ event.id }}").unwrap();
        let path = t.compile_path("/x/{{ event.id }}").unwrap();
        let path2 = t.compile_path("/x/{{ event.id }}").unwrap();
        assert_eq!(t.env.templates().count(), 3);
        let ctx = json!({"event": {"id": "a/b"}});
        assert_eq!(t.render(&a, &ctx).unwrap(), json!("a/b"));
        assert_eq!(t.render(&b, &ctx).unwrap(), json!("a/b"));
        assert_eq!(t.render_string(&text, &ctx).unwrap(), "/x/a/b");
        assert_eq!(t.render_string(&path, &ctx).unwrap(), "/x/a%2Fb");
        assert_eq!(t.render_string(&path2, &ctx).unwrap(), "/x/a%2Fb");
        let miss = t.compile("hi {{ event.missing }}").unwrap();
        let miss2 = t.compile("hi {{ event.missing }}").unwrap();
        t.set_origin(&miss, "recipes/a.yaml:1:1".into());
        t.set_origin(&miss2, "recipes/b.yaml:2:2".into());
        let e = t.render(&miss, &ctx).unwrap_err().0;
        assert!(e.ends_with("at recipes/a.yaml:1:1"), "{e}");
        let e = t.render(&miss2, &ctx).unwrap_err().0;
        assert!(e.ends_with("at recipes/b.yaml:2:2"), "{e}");
    }

    #[test]
    fn undefined_values_are_errors_but_default_works() {
        let ctx = json!({"event": {}});
        let e = render("hi {{ event.missing }}", ctx.clone()).unwrap_err();
        assert!(e.0.contains("undefined"), "{e}");
        assert_eq!(
            render("{{ event.missing | default('x') }}", ctx).unwrap(),
            json!("x")
        );
    }

    #[test]
    fn default_falls_back_when_a_parent_is_missing() {
        let ctx = json!({"event": {"ticket": {"id": 7, "requester": null}}, "steps": {"a": null}});
        for (src, want) in [
            (
                "{{ event.ticket.requester.name | default('there') }}",
                json!("there"),
            ),
            (
                "{{ event.ticket.assignee.name | default('x') }}",
                json!("x"),
            ),
            ("{{ event.nope.deeper.name | d('x') }}", json!("x")),
            (
                "{{ event.ticket['requester']['name'] | default('x') }}",
                json!("x"),
            ),
            ("{{ steps.a.id | default(0) }}", json!(0)),
            ("{{ event.ticket.id | default(0) }}", json!(7)),
            ("{{ event.ticket.requester.name is defined }}", json!(false)),
            (
                "{{ event.ticket.requester.name is not defined }}",
                json!(true),
            ),
            ("{{ event.ticket.id is defined }}", json!(true)),
            (
                "{% if event.ticket.x.y is defined %}a{% else %}b{% endif %}",
                json!("b"),
            ),
            (
                "Hi {{ event.ticket.requester.name | default('there') }}!",
                json!("Hi there!"),
            ),
            // A string that mentions the pattern is left as it is.
            ("{{ 'a.b.c | default(1)' }}", json!("a.b.c | default(1)")),
        ] {
            assert_eq!(render(src, ctx.clone()).unwrap(), want, "{src}");
        }
        // Unguarded, a missing parent is still an error: printing or
        // filtering an undefined value never becomes an empty string.
        for src in [
            "{{ event.ticket.assignee.name }}",
            "Hi {{ event.ticket.requester.name }}",
            "{{ event.ticket.assignee.name | upper }}",
            "{{ event.ticket.assignee.name ~ 'x' }}",
        ] {
            assert!(render(src, ctx.clone()).is_err(), "{src}");
        }
    }

    #[test]
    fn guarded_chains_are_rewritten_and_nothing_else() {
        let g = |s: &str| guard_chains(s).0;
        assert_eq!(
            g("{{ a.b.c | default('x') }}"),
            "{{ _sb_opt(a, 'b', 'c') | default('x') }}"
        );
        assert_eq!(g("{{ a.b | default('x') }}"), "{{ a.b | default('x') }}");
        assert_eq!(g("{{ a.b.c | upper }}"), "{{ a.b.c | upper }}");
        assert_eq!(g("a.b.c | default(1)"), "a.b.c | default(1)");
        assert_eq!(
            g("{{ x and a.b[0] is not defined }}"),
            "{{ x and _sb_opt(a, 'b', 0) is not defined }}"
        );
        assert_eq!(g("{{ a[k].c | default(1) }}"), "{{ a[k].c | default(1) }}");
        assert_eq!(
            g("{{ f(a).b.c | default(1) }}"),
            "{{ f(a).b.c | default(1) }}"
        );
        assert_eq!(
            guard_chains("{{ a.b.c | d(1) }} {{ e.f['g'] is defined }}").1,
            vec!["a.b.c".to_string()]
        );
    }

    #[test]
    fn undefined_errors_say_what_is_missing_and_where() {
        let mut t = Templates::new();
        let c = t
            .compile("Hello {{ event.ticket.requester.name }}")
            .unwrap();
        t.set_origin(&c, "recipes/x.yaml:14:9".into());
        let ctx = json!({"event": {"ticket": {"id": 7}}, "steps": {"s": null}, "vars": {}});
        assert_eq!(
            t.render(&c, &ctx).unwrap_err().0,
            "`event.ticket.requester.name` is undefined (the event has `event.ticket` but no `requester`) at recipes/x.yaml:14:9"
        );
        for (src, want) in [
            (
                "x {{ event.nope }}",
                "`event.nope` is undefined (the event has no `nope`)",
            ),
            (
                "x {{ steps.s.id }}",
                "`steps.s.id` is undefined (`steps.s` is null)",
            ),
            (
                "{{ steps.t.id }}",
                "`steps.t.id` is undefined (step `t` has not run in this run)",
            ),
            (
                "x {{ event.ticket.id.x }}",
                "`event.ticket.id.x` is undefined (`event.ticket.id` is a number, not a mapping)",
            ),
            // The guarded chain is not the cause; the unguarded one is.
            (
                "{{ event.a.b | default(1) }} {{ event.ticket.who }}",
                "`event.ticket.who` is undefined (the event has `event.ticket` but no `who`)",
            ),
        ] {
            let c = t.compile(src).unwrap();
            assert_eq!(t.render(&c, &ctx).unwrap_err().0, want, "{src}");
        }
    }

    #[test]
    fn missing_fields_can_fall_back_with_or() {
        let ctx = json!({"steps": {"contact": {}}});
        assert_eq!(
            render("plan: {{ steps.contact.plan or 'unknown' }}", ctx).unwrap(),
            json!("plan: unknown")
        );
    }

    #[test]
    fn syntax_errors_fail_at_compile_time() {
        let mut t = Templates::new();
        assert!(t.compile("{{ event.id ").is_err());
        assert!(t.compile("{% if %}").is_err());
    }

    #[test]
    fn reports_variables_for_reference_checks() {
        let mut t = Templates::new();
        let c = t
            .compile("{{ steps.contact.id }} {% for x in event.tags %}{{ x }}{% endfor %}")
            .unwrap();
        let vars = t.variables(&c);
        assert!(vars.contains("steps.contact.id"), "{vars:?}");
        assert!(vars.contains("event.tags"), "{vars:?}");
        assert!(!vars.iter().any(|v| v == "x"), "{vars:?}");
    }

    #[test]
    fn path_templates_encode_each_value_as_one_segment() {
        let mut t = Templates::new();
        let p = t.compile_path("/contacts/{{ id }}/notes").unwrap();
        let ctx = |id: &str| json!({ "id": id });
        let out = |id: &str| t.render_string(&p, &ctx(id));
        assert_eq!(
            out("a/../../crm/v3/objects/contacts/999@x").unwrap(),
            "/contacts/a%2F..%2F..%2Fcrm%2Fv3%2Fobjects%2Fcontacts%2F999%40x/notes"
        );
        assert_eq!(
            out("x?y#z //w").unwrap(),
            "/contacts/x%3Fy%23z%20%2F%2Fw/notes"
        );
        assert_eq!(out("Ann_B-1.2~").unwrap(), "/contacts/Ann_B-1.2~/notes");
        assert_eq!(out("é").unwrap(), "/contacts/%C3%A9/notes");
        for dots in [".", ".."] {
            let e = out(dots).unwrap_err();
            assert!(e.0.contains("not allowed as a path segment"), "{e}");
        }
        // Numbers print as numbers.
        let n = t.render_string(&p, &json!({"id": 42})).unwrap();
        assert_eq!(n, "/contacts/42/notes");
        // Other templates are not encoded.
        let text = t.compile("a/{{ id }}").unwrap();
        assert_eq!(t.render_string(&text, &ctx("b/c")).unwrap(), "a/b/c");
    }

    #[test]
    fn a_path_must_start_with_a_slash() {
        let mut t = Templates::new();
        for bad in ["{{ host }}/x", "contacts/{{ id }}", "", "@evil.example/x"] {
            let e = t.compile_path(bad).unwrap_err();
            assert!(e.0.contains("must start with `/`"), "{bad}: {e}");
        }
        assert!(t.compile_path("/x").is_ok());
    }

    /// Templates that would allocate without bound fail instead.
    #[test]
    fn rendering_is_bounded_in_memory() {
        let ctx = json!({"s": "x".repeat(1000)});
        for src in [
            "{{ [1, 2] * 50000000 }}",
            "a {{ [1, 2] * 50000000 }}",
            "{{ ([1, 2] * 50000000) | list }}",
            "{{ ([1, 2] * 50000000) | join(',') }}",
            "{{ ([1] * 200000) | sort }}",
            "{{ ([1, 2] * 50000000) | tojson }}",
            "{{ s * 2000 }}",
            "{{ (s * 1000) | replace('x', s) }}",
            "{% for i in range(100) %}{{ s * 100 }}{% endfor %}",
        ] {
            let e = render(src, ctx.clone()).unwrap_err();
            assert!(
                e.0.contains("too large") || e.0.contains("larger than"),
                "{src}: {e}"
            );
        }
        // Ordinary use still works, kwargs included.
        let ctx = json!({"xs": [3, 1, 2], "m": {"b": 1, "a": 2}});
        for (src, want) in [
            ("{{ xs | sort | join(',') }}", json!("1,2,3")),
            ("{{ xs | sort(reverse=true) }}", json!([3, 2, 1])),
            ("{{ 'a-b' | replace('-', '+') }}", json!("a+b")),
            ("{{ m | tojson }}", json!(r#"{"a":2,"b":1}"#)),
            ("{{ m | dictsort | first | first }}", json!("a")),
        ] {
            assert_eq!(render(src, ctx.clone()).unwrap(), want, "{src}");
        }
    }

    #[test]
    fn time_functions() {
        let mut t = Templates::new();
        t.set_calendars(
            crate::time::calendar::compile_all(&json!({"eu": {
                "timezone": "Europe/Berlin", "hours": {"mon-fri": "09:00-17:00"}
            }}))
            .unwrap(),
        );
        // Sunday 2025-11-30 12:00 UTC.
        let ctx =
            json!({"run": {"now": 1_764_504_000_000i64}, "event": {"at": "2025-11-28T16:30:00Z"}});
        let mut r = |src: &str| {
            let c = t.compile(src).unwrap();
            t.render(&c, &ctx)
        };
        for (src, want) in [
            ("{{ now() }}", json!("2025-11-30T12:00:00Z")),
            (
                "{{ event.at | in_tz('Europe/Berlin') }}",
                json!("2025-11-28T17:30:00+01:00"),
            ),
            (
                "{{ event.at | in_tz('America/New_York') | weekday }}",
                json!("Friday"),
            ),
            (
                "{{ event.at | format_date('%a %H:%M', 'Europe/Berlin') }}",
                json!("Fri 17:30"),
            ),
            (
                "{{ event.at | date_add('3d') }}",
                json!("2025-12-01T16:30:00Z"),
            ),
            (
                "{{ '28.11.2025 16:30 +0000' | parse_date('%d.%m.%Y %H:%M %z') }}",
                json!("2025-11-28T16:30:00Z"),
            ),
            ("{{ event.at | timestamp_ms }}", json!(1_764_347_400_000i64)),
            ("{{ within_business_hours('eu') }}", json!(false)),
            (
                "{{ within_business_hours('eu', '2025-11-28T15:00:00Z') }}",
                json!(true),
            ),
            (
                "We will answer by {{ next_business_open('eu') | format_date('%A %H:%M') }}",
                json!("We will answer by Monday 09:00"),
            ),
        ] {
            assert_eq!(r(src).unwrap(), want, "{src}");
        }
        for (src, want) in [
            ("{{ within_business_hours('us') }}", "unknown calendar `us`"),
            ("{{ event.at | in_tz('Mars/Base') }}", "unknown time zone"),
            ("{{ 'soon' | weekday }}", "cannot read `soon`"),
        ] {
            let e = r(src).unwrap_err();
            assert!(e.0.contains(want), "{src}: {e}");
        }
    }

    #[test]
    fn now_needs_the_run_clock() {
        let mut t = Templates::new();
        let c = t.compile("{{ now() }}").unwrap();
        assert!(t.variables(&c).is_empty(), "functions are not variables");
        let e = t.render(&c, &json!({})).unwrap_err();
        assert!(e.0.contains("run.now"), "{e}");
    }

    #[test]
    fn finds_unknown_calendar_names() {
        let mut t = Templates::new();
        t.set_calendars(
            crate::time::calendar::compile_all(&json!({"eu": {
                "timezone": "UTC", "hours": {"mon": "09:00-17:00"}
            }}))
            .unwrap(),
        );
        let c = t
            .compile("{{ within_business_hours('eu') }} {{ next_business_open( \"us\" ) }}")
            .unwrap();
        assert_eq!(t.unknown_calendars(&c), vec!["us".to_string()]);
    }

    #[test]
    fn renders_nested_values() {
        let mut t = Templates::new();
        let v = t
            .compile_value(&json!({"a": ["{{ n }}", 1, true], "b": {"c": "n={{ n }}"}}))
            .unwrap();
        let out = t.render_value(&v, &json!({"n": 5})).unwrap();
        assert_eq!(out, json!({"a": [5, 1, true], "b": {"c": "n=5"}}));
    }

    #[test]
    fn detect_language_names_the_language_and_its_confidence() {
        let ctx = json!({
            "de": "Ich kann mich seit gestern nicht mehr anmelden, das Passwort wird nicht akzeptiert.",
            "en": "I cannot log in since yesterday, my password is not accepted.",
            "ja": "昨日からログインできません。パスワードが受け付けられません。",
            "digits": "12345 !!",
        });
        let de = render("{{ de | detect_language }}", ctx.clone()).unwrap();
        assert_eq!(
            (&de["code"], &de["iso639_3"], &de["name"]),
            (&json!("de"), &json!("deu"), &json!("German"))
        );
        assert!(de["confidence"].as_f64().unwrap() > 0.5, "{de}");
        assert_eq!(
            render("{{ (en | detect_language).code }}", ctx.clone()).unwrap(),
            json!("en")
        );
        assert_eq!(
            render("{{ (ja | detect_language).code }}", ctx.clone()).unwrap(),
            json!("ja")
        );
        // Nothing to go by: undetermined, confidence 0; a missing value too.
        let und = render("{{ digits | detect_language }}", ctx.clone()).unwrap();
        assert_eq!(
            und,
            json!({"code": "und", "iso639_3": "und", "name": "Undetermined", "confidence": 0.0, "reliable": false})
        );
        assert_eq!(
            render("{{ (nothing | detect_language).code }}", ctx.clone()).unwrap(),
            json!("und")
        );
        // `only`: the guess among the listed languages, by 639-1 or 639-3 code.
        assert_eq!(
            render(
                "{{ (de | detect_language(only=['en', 'deu'])).code }}",
                ctx.clone()
            )
            .unwrap(),
            json!("de")
        );
        let e = render("{{ de | detect_language(only=['en', 'xx']) }}", ctx).unwrap_err();
        assert!(e.0.contains("unknown language code `xx`"), "{e}");
    }
}
