//! Loading YAML files (recipes, connectors) into typed values, with a source map.
//!
//! Recipe authors write YAML, not Rust, so every problem in their files must be
//! reported as `file:line:column: message` saying what was expected. This module
//! parses the text with yaml-rust2's event parser into a tree of marked nodes,
//! turns that tree into a [`serde_json::Value`] plus a [`SourceMap`] (JSON
//! pointer → position of the value, and of the key for mapping entries), and then
//! deserializes the value with `serde_path_to_error` so serde's errors can be
//! placed too. Checks done later (an unknown connector name, a bad template) use
//! the same [`SourceMap`] to point at the line that caused them.
//!
//! Scalars follow the YAML 1.2 core schema: `on`, `yes` and `no` are strings, and
//! a quoted scalar is always a string.
//!
//! This module must never panic on its input and never do I/O: callers read the
//! file and pass its text, so the same code checks files, fixtures and uploads.

use serde::de::{DeserializeOwned, Unexpected};
use serde_json::{Map, Number, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Deepest nesting of mappings and sequences we accept. Converting the tree and
/// deserializing it both recurse, so a hostile `[[[[...` must stop here and not
/// overflow the stack. Real recipes nest a dozen levels at most.
const MAX_DEPTH: usize = 64;

/// Most nodes one file may expand to, counting every copy an alias makes, so a
/// "billion laughs" file of nested aliases fails instead of eating the memory.
const MAX_NODES: usize = 200_000;

/// A place in a file: 1-based line and 1-based column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    /// The start of a file, where errors go that have no better place.
    const START: Pos = Pos { line: 1, column: 1 };

    fn from_marker(mark: &Marker) -> Pos {
        // yaml-rust2 markers have 1-based lines and 0-based columns.
        Pos {
            line: mark.line().max(1),
            column: mark.col() + 1,
        }
    }
}

/// Where each node of a loaded file is.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    file: PathBuf,
    /// JSON pointer → where the node's value starts.
    values: HashMap<String, Pos>,
    /// JSON pointer of a mapping entry → where its key starts.
    keys: HashMap<String, Pos>,
    /// The file's text, to place an error inside a string value
    /// ([`SourceMap::error_inside`]); kept whole (not split into lines,
    /// one allocation a line) since only an error reads it.
    text: std::sync::Arc<str>,
}

impl SourceMap {
    /// The file this map describes, as given to [`load`].
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Position of the node at `pointer`, or of its nearest existing ancestor (so
    /// an error about a missing child points at the parent). `""` is the document
    /// root (line 1 column 1 if nothing else is known).
    pub fn locate(&self, pointer: &str) -> Pos {
        let mut p = pointer;
        loop {
            if let Some(pos) = self.values.get(p) {
                return *pos;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return Pos::START,
            }
        }
    }

    /// Position of the *key* of the mapping entry at `pointer` (falls back to
    /// [`SourceMap::locate`] when `pointer` is not a mapping entry).
    pub fn locate_key(&self, pointer: &str) -> Pos {
        match self.keys.get(pointer) {
            Some(pos) => *pos,
            None => self.locate(pointer),
        }
    }

    /// `file:line:column` of the node at `pointer` (as [`SourceMap::locate`]
    /// finds it), for messages written later than loading (a render error).
    pub fn place(&self, pointer: &str) -> String {
        let pos = self.locate(pointer);
        format!("{}:{}:{}", self.file.display(), pos.line, pos.column)
    }

    /// Build a located error for a semantic problem found after loading.
    pub fn error(&self, pointer: &str, message: impl Into<String>) -> LoadError {
        self.error_at(self.locate(pointer), message)
    }

    /// A located error at the *key* of the entry at `pointer` (e.g. a JSONPath used as a key).
    pub fn error_at_key(&self, pointer: &str, message: impl Into<String>) -> LoadError {
        self.error_at(self.locate_key(pointer), message)
    }

    /// A located error at byte `offset` of the string value at `pointer`
    /// (whose text is `source`): inside a literal block scalar (`|`) on the
    /// offending line and column; inside a one-line plain or quoted scalar at
    /// its column (escapes before `offset` are not counted). Where the file
    /// does not show the string's lines as they are (a folded scalar, a
    /// multi-line flow scalar), at the value's start.
    pub fn error_inside(
        &self,
        pointer: &str,
        source: &str,
        offset: usize,
        message: impl Into<String>,
    ) -> LoadError {
        let start = self.locate(pointer);
        let mut cut = offset.min(source.len());
        while !source.is_char_boundary(cut) {
            cut -= 1;
        }
        let before = &source[..cut];
        let line_in = before.matches('\n').count();
        let col_in = before[before.rfind('\n').map_or(0, |i| i + 1)..]
            .chars()
            .count();
        // A literal block scalar's value starts at its first content line;
        // its lines follow at the same indentation. Accept the place only if
        // the file shows the template's own line there.
        let file_line = |n: usize| n.checked_sub(1).and_then(|i| self.text.lines().nth(i));
        let first =
            file_line(start.line).and_then(|l| l.chars().nth(start.column.saturating_sub(1)));
        let pos = match first {
            Some('"' | '\'') if line_in == 0 => Pos {
                line: start.line,
                column: start.column + 1 + col_in,
            },
            Some(_) => {
                let line = start.line + line_in;
                let own = source.split('\n').nth(line_in).unwrap_or("");
                let shown = file_line(line)
                    .map(|l| l.chars().skip(start.column - 1).collect::<String>())
                    .unwrap_or_default();
                if shown.starts_with(own.trim_end()) {
                    Pos {
                        line,
                        column: start.column + col_in,
                    }
                } else {
                    start
                }
            }
            None => start,
        };
        self.error_at(pos, message)
    }

    fn error_at(&self, pos: Pos, message: impl Into<String>) -> LoadError {
        LoadError {
            file: self.file.clone(),
            pos,
            message: message.into(),
        }
    }
}

/// One error in one file, printed as `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{}:{}: {message}", file.display(), pos.line, pos.column)]
pub struct LoadError {
    pub file: PathBuf,
    pub pos: Pos,
    pub message: String,
}

/// Parse `text` (the contents of `file`) as YAML and deserialize it into `T`.
pub fn load<T: DeserializeOwned>(file: &Path, text: &str) -> Result<(T, SourceMap), LoadError> {
    let (value, map) = load_value(file, text)?;
    match serde_path_to_error::deserialize::<_, T>(&value) {
        Ok(t) => Ok((t, map)),
        Err(e) => Err(serde_error(&map, &value, e)),
    }
}

/// Same as [`load`], but return the raw JSON value (callers sometimes need
/// untyped sub-trees).
pub fn load_value(file: &Path, text: &str) -> Result<(Value, SourceMap), LoadError> {
    // yaml-rust2 would make a byte-order mark part of the first key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut map = SourceMap {
        file: file.to_path_buf(),
        text: text.into(),
        ..SourceMap::default()
    };
    let root = parse(text).map_err(|(pos, message)| map.error_at(pos, message))?;
    let mut path = String::new();
    let value = emit(root, &mut path, &mut map);
    Ok((value, map))
}

/// Build a JSON pointer (RFC 6901) from segments, escaping `~` and `/`:
/// `pointer(&["steps", "0", "call"]) == "/steps/0/call"`.
pub fn pointer(segments: &[&str]) -> String {
    let mut out = String::new();
    for s in segments {
        push_segment(&mut out, s);
    }
    out
}

/// The candidate closest to `word` if it is a plausible typo of it (at most two
/// edits, and fewer edits than `word` has characters), for "did you mean" hints.
/// Edits are those of the optimal string alignment distance: insertions,
/// deletions, substitutions and swaps of neighbours each cost one (`clal` is
/// one edit from `call`).
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let len = word.chars().count();
    candidates
        .into_iter()
        .map(|c| (strsim::osa_distance(word, c), c))
        .filter(|&(d, _)| d <= 2 && d < len)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// RFC 6901 escaping of one JSON pointer segment (`~` → `~0`, `/` → `~1`):
/// the one place pointers are escaped.
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The inverse of [`escape`].
fn push_segment(out: &mut String, segment: &str) {
    out.push('/');
    out.push_str(&escape(segment));
}

// ---------------------------------------------------------------------------
// From text to a tree of marked nodes.

/// A parsed node and where it starts.
#[derive(Debug, Clone)]
struct Node {
    pos: Pos,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Scalar(Value),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    key_pos: Pos,
    value: Node,
}

/// A collection whose children are still arriving.
enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<Entry>,
        /// Keys seen so far and where, to report duplicates.
        seen: HashMap<String, Pos>,
        /// The key whose value comes next.
        key: Option<(String, Pos)>,
    },
}

type ParseError = (Pos, String);

fn parse(text: &str) -> Result<Node, ParseError> {
    let mut builder = Builder {
        lines: text.lines().collect(),
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        root_is_blank: false,
        nodes: 0,
    };
    let mut parser = Parser::new_from_str(text);
    let mut documents = 0usize;
    loop {
        let (event, mark) = parser
            .next_token()
            .map_err(|e| (Pos::from_marker(e.marker()), syntax_message(e.info())))?;
        let pos = Pos::from_marker(&mark);
        match event {
            Event::StreamEnd => break,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err((
                        pos,
                        "expected a single YAML document, found a second one \
                         (remove the `---` line)"
                            .to_owned(),
                    ));
                }
            }
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
            Event::Scalar(text, style, anchor, tag) => {
                builder.scalar(text, style, anchor, tag.as_ref(), pos, &mark)?
            }
            Event::Alias(id) => builder.alias(id, pos)?,
            Event::SequenceStart(anchor, tag) => {
                builder.check_collection_tag(tag.as_ref(), "seq", pos)?;
                builder.open(
                    Frame::Seq {
                        pos,
                        anchor,
                        items: Vec::new(),
                    },
                    "a list",
                    pos,
                )?
            }
            Event::MappingStart(anchor, tag) => {
                builder.check_collection_tag(tag.as_ref(), "map", pos)?;
                builder.open(
                    Frame::Map {
                        pos,
                        anchor,
                        entries: Vec::new(),
                        seen: HashMap::new(),
                        key: None,
                    },
                    "a mapping",
                    pos,
                )?
            }
            Event::SequenceEnd | Event::MappingEnd => builder.close()?,
        }
    }
    match builder.root {
        Some(root) if !builder.root_is_blank => Ok(root),
        _ => Err((Pos::START, "file is empty, expected a mapping".to_owned())),
    }
}

struct Builder<'t> {
    /// The source lines, to place empty list items (see `blank_item_pos`).
    lines: Vec<&'t str>,
    stack: Vec<Frame>,
    /// Anchor id → the anchored node and its size in nodes.
    anchors: HashMap<usize, (Node, usize)>,
    root: Option<Node>,
    /// The document is nothing but an implicit null (`---` alone).
    root_is_blank: bool,
    /// Nodes made so far, alias copies included (see `MAX_NODES`).
    nodes: usize,
}

impl Builder<'_> {
    fn count(&mut self, n: usize, pos: Pos) -> Result<(), ParseError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err((
                pos,
                format!(
                    "file is too large: more than {MAX_NODES} values once aliases are expanded"
                ),
            ));
        }
        Ok(())
    }

    /// Whether the innermost collection is a mapping waiting for its next key.
    fn wants_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }

    fn scalar(
        &mut self,
        text: String,
        style: TScalarStyle,
        anchor: usize,
        tag: Option<&Tag>,
        pos: Pos,
        mark: &Marker,
    ) -> Result<(), ParseError> {
        self.count(1, pos)?;
        let blank = text.is_empty() && style == TScalarStyle::Plain && tag.is_none();
        // yaml-rust2 places an empty value at the next token, which may be lines
        // below; the key (or the list's `-`) is where the author looks instead.
        let pos = match self.stack.last() {
            Some(Frame::Map {
                key: Some((_, key_pos)),
                ..
            }) if blank => *key_pos,
            Some(Frame::Seq { .. }) if blank => self.blank_item_pos(mark).unwrap_or(pos),
            _ => pos,
        };
        if self.wants_key() {
            // Keys are names: take them as written (`on`, `1`, `true` stay text).
            return self.push(
                Node {
                    pos,
                    kind: Kind::Scalar(Value::String(text)),
                },
                anchor,
                1,
            );
        }
        let value = match tag {
            Some(tag) => tagged_scalar(&text, tag).map_err(|m| (pos, m))?,
            None if style == TScalarStyle::Plain => plain_scalar(&text).map_err(|m| (pos, m))?,
            None => Value::String(text),
        };
        if self.stack.is_empty() && blank {
            self.root_is_blank = true;
        }
        self.push(
            Node {
                pos,
                kind: Kind::Scalar(value),
            },
            anchor,
            1,
        )
    }

    /// Where the `-` of an empty list item is. yaml-rust2 marks it at the token
    /// after it: just past the next item's `-`, or where the list ends. Between
    /// the two there is only blank space and comments, so walk back over those.
    fn blank_item_pos(&self, mark: &Marker) -> Option<Pos> {
        let mut line = mark.line().checked_sub(1)?;
        // The mark may be past the last line when the file ends without a newline.
        let text = self.lines.get(line).copied().unwrap_or("");
        let mut chars: Vec<char> = text.chars().take(mark.col()).collect();
        // Skip the next item's `-` when the mark is just past it.
        if let Some(i) = chars.iter().rposition(|c| !c.is_whitespace()) {
            if chars[i] != '-' {
                return None;
            }
            chars.truncate(i);
        }
        loop {
            // Only blank space, `-` and a comment can be on the lines we cross.
            if let Some(hash) = chars
                .iter()
                .enumerate()
                .position(|(i, &c)| c == '#' && (i == 0 || chars[i - 1].is_whitespace()))
            {
                chars.truncate(hash);
            }
            if let Some(i) = chars.iter().rposition(|c| !c.is_whitespace()) {
                return (chars[i] == '-').then_some(Pos {
                    line: line + 1,
                    column: i + 1,
                });
            }
            line = line.checked_sub(1)?;
            chars = self.lines.get(line)?.chars().collect();
        }
    }

    fn alias(&mut self, id: usize, pos: Pos) -> Result<(), ParseError> {
        let Some((node, size)) = self.anchors.get(&id) else {
            // The parser checks that the anchor exists, so it is still open:
            // the alias sits inside the value it names.
            return Err((pos, "alias used inside the value it refers to".to_owned()));
        };
        let size = *size;
        let mut node = node.clone();
        // The copy's root is here; what is inside it stays where it was written.
        node.pos = pos;
        self.count(size, pos)?;
        if self.wants_key() {
            let key = match node.kind {
                Kind::Scalar(Value::String(s)) => s,
                Kind::Scalar(v) => v.to_string(),
                _ => {
                    return Err((
                        pos,
                        "expected a key name, found an alias to a collection".to_owned(),
                    ))
                }
            };
            node.kind = Kind::Scalar(Value::String(key));
        }
        self.push(node, 0, size)
    }

    fn check_collection_tag(
        &self,
        tag: Option<&Tag>,
        allowed: &str,
        pos: Pos,
    ) -> Result<(), ParseError> {
        match tag {
            Some(tag) if !(is_core(tag) && tag.suffix == allowed) => {
                Err((pos, format!("unsupported tag `{}`", tag_name(tag))))
            }
            _ => Ok(()),
        }
    }

    fn open(&mut self, frame: Frame, what: &str, pos: Pos) -> Result<(), ParseError> {
        if self.wants_key() {
            return Err((
                pos,
                format!("expected a key name, found {what} used as a key"),
            ));
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err((pos, format!("nested more than {MAX_DEPTH} levels deep")));
        }
        self.count(1, pos)?;
        self.stack.push(frame);
        Ok(())
    }

    fn close(&mut self) -> Result<(), ParseError> {
        let (node, anchor) = match self.stack.pop() {
            Some(Frame::Seq { pos, anchor, items }) => (
                Node {
                    pos,
                    kind: Kind::Seq(items),
                },
                anchor,
            ),
            Some(Frame::Map {
                pos,
                anchor,
                entries,
                ..
            }) => (
                Node {
                    pos,
                    kind: Kind::Map(entries),
                },
                anchor,
            ),
            // The parser never ends a collection it did not start.
            None => return Ok(()),
        };
        let size = if anchor == 0 { 0 } else { size_of(&node) };
        self.push(node, anchor, size)
    }

    /// Attach a finished node to its parent (or make it the root), and remember
    /// it if it carries an anchor. `size` only matters when `anchor != 0`.
    fn push(&mut self, node: Node, anchor: usize, size: usize) -> Result<(), ParseError> {
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                pos,
                entries,
                seen,
                key,
                ..
            }) => match key.take() {
                Some((key, key_pos)) => entries.push(Entry {
                    key,
                    key_pos,
                    value: node,
                }),
                None => {
                    let Kind::Scalar(Value::String(name)) = node.kind else {
                        return Err((node.pos, "expected a key name".to_owned()));
                    };
                    if let Some(first) = seen.get(&name) {
                        return Err((
                            node.pos,
                            format!(
                                "duplicate key `{name}` (first set at line {} column {})",
                                first.line, first.column
                            ),
                        ));
                    }
                    // A block mapping's start marker is at its first `:`; the
                    // mapping really starts at its first key.
                    if seen.is_empty() && node.pos < *pos {
                        *pos = node.pos;
                    }
                    seen.insert(name.clone(), node.pos);
                    *key = Some((name, node.pos));
                }
            },
        }
        Ok(())
    }
}

fn size_of(node: &Node) -> usize {
    match &node.kind {
        Kind::Scalar(_) => 1,
        Kind::Seq(items) => 1 + items.iter().map(size_of).sum::<usize>(),
        Kind::Map(entries) => 1 + entries.iter().map(|e| 1 + size_of(&e.value)).sum::<usize>(),
    }
}

/// Resolve a plain (unquoted) scalar by the YAML 1.2 core schema.
fn plain_scalar(text: &str) -> Result<Value, String> {
    Ok(match text {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF"
        | ".nan" | ".NaN" | ".NAN" => {
            return Err(format!(
            "`{text}` is not a finite number, which is all we can hold; quote it to use it as text"
        ))
        }
        _ => match number(text) {
            Some(n) => Value::Number(n?),
            None => Value::String(text.to_owned()),
        },
    })
}

/// `None` if `text` is not a number by the core schema; an error if it is one
/// too large to hold.
fn number(text: &str) -> Option<Result<Number, String>> {
    let digits = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c.is_digit(radix));
    if let Some(hex) = text.strip_prefix("0x") {
        return digits(hex, 16).then(|| radix_number(text, hex, 16));
    }
    if let Some(oct) = text.strip_prefix("0o") {
        return digits(oct, 8).then(|| radix_number(text, oct, 8));
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits(unsigned, 10) {
        if let Ok(i) = text.parse::<i64>() {
            return Some(Ok(i.into()));
        }
        if let Ok(u) = text.parse::<u64>() {
            return Some(Ok(u.into()));
        }
    }
    // [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            (digits(int, 10) && (frac.is_empty() || digits(frac, 10)))
                || (int.is_empty() && digits(frac, 10))
        }
        None => digits(mantissa, 10),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e), 10));
    if !(mantissa_ok && exponent_ok) {
        return None;
    }
    Some(
        text.parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .ok_or_else(|| format!("number `{text}` is too large")),
    )
}

fn radix_number(text: &str, digits: &str, radix: u32) -> Result<Number, String> {
    u64::from_str_radix(digits, radix)
        .map(Number::from)
        .map_err(|_| format!("number `{text}` is too large"))
}

/// `tag:yaml.org,2002:` is what `!!` expands to.
fn is_core(tag: &Tag) -> bool {
    tag.handle == "tag:yaml.org,2002:"
}

fn tag_name(tag: &Tag) -> String {
    if is_core(tag) {
        format!("!!{}", tag.suffix)
    } else {
        format!("{}{}", tag.handle, tag.suffix)
    }
}

/// A scalar with an explicit tag (`!!str 123`, `!!int "7"`).
fn tagged_scalar(text: &str, tag: &Tag) -> Result<Value, String> {
    let name = tag_name(tag);
    if !is_core(tag) {
        return Err(format!("unsupported tag `{name}`"));
    }
    let resolved = || plain_scalar(text).unwrap_or(Value::Null);
    let value = match tag.suffix.as_str() {
        "str" => return Ok(Value::String(text.to_owned())),
        "null" => resolved().is_null().then_some(Value::Null),
        "bool" => Some(resolved()).filter(Value::is_boolean),
        "int" => Some(resolved()).filter(|v| v.is_i64() || v.is_u64()),
        "float" => match resolved() {
            Value::Number(n) => n.as_f64().and_then(Number::from_f64).map(Value::Number),
            _ => None,
        },
        _ => return Err(format!("unsupported tag `{name}`")),
    };
    value.ok_or_else(|| format!("`{text}` is not a valid `{name}` value"))
}

/// Add a hint to the scanner's terse messages for the mistakes people make.
fn syntax_message(info: &str) -> String {
    let hint = if info.contains("tabs disallowed") {
        "indent with spaces, not tabs"
    } else if info.contains("mapping values are not allowed") {
        "a key is indented wrongly, or a value containing `: ` needs quotes"
    } else if info.contains("did not find expected key")
        || info.contains("did not find expected '-'")
    {
        "check the indentation of this line against the lines above"
    } else if info.contains("quoted scalar") {
        "is a closing quote missing?"
    } else if info.contains("unknown anchor") {
        "define `&name` before using `*name`"
    } else {
        return format!("invalid YAML: {info}");
    };
    format!("invalid YAML: {info} ({hint})")
}

// ---------------------------------------------------------------------------
// From the tree to JSON and the source map.

fn emit(node: Node, path: &mut String, map: &mut SourceMap) -> Value {
    map.values.insert(path.clone(), node.pos);
    match node.kind {
        Kind::Scalar(v) => v,
        Kind::Seq(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let len = path.len();
                    push_segment(path, &i.to_string());
                    let v = emit(item, path, map);
                    path.truncate(len);
                    v
                })
                .collect(),
        ),
        Kind::Map(entries) => {
            let mut object = Map::new();
            for e in entries {
                let len = path.len();
                push_segment(path, &e.key);
                map.keys.insert(path.clone(), e.key_pos);
                let v = emit(e.value, path, map);
                path.truncate(len);
                object.insert(e.key, v);
            }
            Value::Object(object)
        }
    }
}

// ---------------------------------------------------------------------------
// Placing serde's errors.

fn serde_error(
    map: &SourceMap,
    value: &Value,
    err: serde_path_to_error::Error<serde_json::Error>,
) -> LoadError {
    let mut at = String::new();
    for segment in err.path() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => {
                push_segment(&mut at, &index.to_string())
            }
            serde_path_to_error::Segment::Map { key } => push_segment(&mut at, key),
            serde_path_to_error::Segment::Enum { variant } => push_segment(&mut at, variant),
            // Nothing after an unknown step can be followed in the value.
            serde_path_to_error::Segment::Unknown => break,
        }
    }
    let message = err.into_inner().to_string();
    // "unknown field `cal`, expected one of `id`, `call`": the first name is the
    // offender, the rest are what was expected.
    let names: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    let unknown_field = message.starts_with("unknown field");
    let unknown_variant = message.starts_with("unknown variant");
    let (pos, message) = match names.split_first() {
        Some((bad, expected)) if unknown_field || unknown_variant => {
            let pos =
                find(map, value, &at, bad, unknown_variant).unwrap_or_else(|| map.locate(&at));
            let message = match did_you_mean(bad, expected.iter().copied()) {
                Some(good) => format!("{message}; did you mean `{good}`?"),
                None => message,
            };
            (pos, message)
        }
        _ => {
            let pos = find_unexpected(map, value, &at, &message).unwrap_or_else(|| map.locate(&at));
            (pos, message)
        }
    };
    map.error_at(pos, message)
}

/// Where the offending name of an unknown field (a key) or variant (a key, or a
/// string value such as a `type: ...` tag) is: the shallowest match at or under
/// `at`, first in the file on a tie. serde_path_to_error stops at the enclosing
/// node for internally tagged and untagged enums, so we search below it.
fn find(map: &SourceMap, value: &Value, at: &str, name: &str, values_too: bool) -> Option<Pos> {
    // The path may already end at the offending key.
    if at
        .rsplit('/')
        .next()
        .is_some_and(|last| unescape(last) == name)
    {
        if let Some(pos) = map.keys.get(at) {
            return Some(*pos);
        }
    }
    let mut level = vec![(at.to_owned(), value.pointer(at)?)];
    while !level.is_empty() {
        let mut hits = Vec::new();
        let mut next = Vec::new();
        for (path, v) in &level {
            match v {
                Value::Object(o) => {
                    for (k, child) in o {
                        let mut p = path.clone();
                        push_segment(&mut p, k);
                        if k == name {
                            hits.push(map.locate_key(&p));
                        } else if values_too && child.as_str() == Some(name) {
                            hits.push(map.locate(&p));
                        }
                        next.push((p, child));
                    }
                }
                Value::Array(a) => {
                    for (i, child) in a.iter().enumerate() {
                        let mut p = path.clone();
                        push_segment(&mut p, &i.to_string());
                        if values_too && child.as_str() == Some(name) {
                            hits.push(map.locate(&p));
                        }
                        next.push((p, child));
                    }
                }
                _ => {}
            }
        }
        if let Some(pos) = hits.into_iter().min() {
            return Some(pos);
        }
        level = next;
    }
    None
}

/// For "invalid type: integer `5`, expected a string" when the path stopped at
/// a collection (inside an internally tagged or untagged enum): the scalar below
/// it that serde describes that way, if exactly one matches.
fn find_unexpected(map: &SourceMap, value: &Value, at: &str, message: &str) -> Option<Pos> {
    let mut stack = match value.pointer(at)? {
        v @ (Value::Object(_) | Value::Array(_)) => vec![(at.to_owned(), v)],
        _ => return None,
    };
    let mut found = None;
    while let Some((path, v)) = stack.pop() {
        let children: Vec<(String, &Value)> = match v {
            Value::Object(o) => o.iter().map(|(k, c)| (k.clone(), c)).collect(),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, c)| (i.to_string(), c))
                .collect(),
            _ => {
                let unexpected = match v {
                    Value::Bool(b) => Unexpected::Bool(*b),
                    Value::String(s) => Unexpected::Str(s),
                    Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                        (Some(u), _, _) => Unexpected::Unsigned(u),
                        (_, Some(i), _) => Unexpected::Signed(i),
                        (_, _, Some(f)) => Unexpected::Float(f),
                        _ => continue,
                    },
                    _ => continue,
                };
                if message.starts_with(&format!("invalid type: {unexpected},"))
                    || message.starts_with(&format!("invalid value: {unexpected},"))
                {
                    if found.is_some() {
                        return None; // ambiguous: keep the enclosing node
                    }
                    found = Some(map.locate(&path));
                }
                continue;
            }
        };
        for (segment, child) in children {
            let mut p = path.clone();
            push_segment(&mut p, &segment);
            stack.push((p, child));
        }
    }
    found
}

fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

/// Every `*.yaml` / `*.yml` file in `dir` with its text, sorted by name. A
/// directory or file that cannot be read is reported in `errors`.
pub fn read_dir(dir: &Path, errors: &mut Vec<LoadError>) -> Vec<(PathBuf, String)> {
    let here = |message: String| LoadError {
        file: dir.to_path_buf(),
        pos: Pos { line: 1, column: 1 },
        message,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(here(format!("cannot read directory: {e}")));
            return Vec::new();
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| match std::fs::read_to_string(&p) {
            Ok(text) => Some((p, text)),
            Err(e) => {
                errors.push(LoadError {
                    file: p.clone(),
                    pos: Pos { line: 1, column: 1 },
                    message: format!("cannot read file: {e}"),
                });
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Recipe {
        id: String,
        #[serde(default)]
        trigger: Option<Trigger>,
        steps: Vec<Step>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Trigger {
        source: String,
        events: Vec<String>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Step {
        id: String,
        #[serde(default)]
        call: Option<String>,
        #[serde(default)]
        then: Vec<Action>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
    enum Action {
        Http { url: String },
        Log { message: String },
    }

    /// Load `yaml` as `T` from `recipe.yaml`. `expected` is the loaded value as
    /// JSON, or the error exactly as it is printed.
    #[track_caller]
    fn check<T: DeserializeOwned + Serialize>(yaml: &str, expected: &str) {
        match load::<T>(Path::new("recipe.yaml"), yaml) {
            Ok((t, _)) => {
                let got = serde_json::to_value(&t).unwrap();
                let want: Value = serde_json::from_str(expected)
                    .unwrap_or_else(|_| panic!("loaded {got}, expected error {expected}"));
                assert_eq!(got, want, "for YAML:\n{yaml}");
            }
            Err(e) => assert_eq!(e.to_string(), expected, "for YAML:\n{yaml}"),
        }
    }

    // --- values -----------------------------------------------------------

    #[test]
    fn plain_scalars_follow_the_core_schema() {
        check::<Value>(
            "int: 1\nneg: -2\nplus: +7\nzeros: 007\nhex: 0x1F\noct: 0o17\n\
             big: 18446744073709551615\nfloat: 1.5\nexp: 1e3\nleading_dot: .5\n\
             t: true\nf: FALSE\nn: null\ntilde: ~\nempty:\nword: hello world\n\
             version: 1.2.3\n",
            r#"{"int":1,"neg":-2,"plus":7,"zeros":7,"hex":31,"oct":15,
                "big":18446744073709551615,"float":1.5,"exp":1000.0,"leading_dot":0.5,
                "t":true,"f":false,"n":null,"tilde":null,"empty":null,
                "word":"hello world","version":"1.2.3"}"#,
        );
    }

    #[test]
    fn quoted_scalars_are_strings() {
        check::<Value>(
            "a: \"1\"\nb: 'true'\nc: \"null\"\nd: ''\ne: \"tab\\there\"\n",
            r#"{"a":"1","b":"true","c":"null","d":"","e":"tab\there"}"#,
        );
    }

    #[test]
    fn yaml_1_1_booleans_stay_strings() {
        check::<Value>(
            "on: push\nyes: no\noff: y\n",
            r#"{"on":"push","yes":"no","off":"y"}"#,
        );
    }

    #[test]
    fn non_string_keys_are_taken_as_written() {
        check::<Value>(
            "1: a\ntrue: b\n0x10: c\n~: d\n",
            r#"{"1":"a","true":"b","0x10":"c","~":"d"}"#,
        );
    }

    #[test]
    fn nested_maps_and_lists_block_and_flow() {
        check::<Value>(
            "a:\n  b:\n    - 1\n    - c: [x, {y: 2}]\n  d: {}\ne: []\n",
            r#"{"a":{"b":[1,{"c":["x",{"y":2}]}],"d":{}},"e":[]}"#,
        );
    }

    #[test]
    fn anchors_and_aliases_are_copied() {
        check::<Value>(
            "base: &b {x: 1, y: [2]}\ncopy: *b\nname: &n hi\nagain: *n\n",
            r#"{"base":{"x":1,"y":[2]},"copy":{"x":1,"y":[2]},"name":"hi","again":"hi"}"#,
        );
        // The copy is where the alias is; what is inside it, where it was written.
        let (_, map) = load_value(
            Path::new("r.yaml"),
            "base: &b {x: 1}
copy: *b
",
        )
        .unwrap();
        assert_eq!(at(map.locate("/copy")), (2, 7));
        assert_eq!(at(map.locate("/copy/x")), (1, 14));
        assert_eq!(at(map.locate_key("/copy/x")), (1, 11));
    }

    #[test]
    fn block_scalars_keep_their_text() {
        check::<Value>(
            "lit: |\n  one\n  two\nfold: >\n  one\n  two\nkeep: |+\n  x\n\nstrip: |-\n  y\n",
            r#"{"lit":"one\ntwo\n","fold":"one two\n","keep":"x\n\n","strip":"y"}"#,
        );
    }

    #[test]
    fn explicit_tags() {
        check::<Value>("a: !!str 12\nb: !!int \"7\"\n", r#"{"a":"12","b":7}"#);
        check::<Value>(
            "a: !!int x\n",
            "recipe.yaml:1:10: `x` is not a valid `!!int` value",
        );
        check::<Value>("a: !ref x\n", "recipe.yaml:1:9: unsupported tag `!ref`");
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        check::<Value>("\u{feff}a: 1\n", r#"{"a":1}"#);
    }

    #[test]
    fn numbers_json_cannot_hold_are_errors() {
        check::<Value>(
            "a: .inf\n",
            "recipe.yaml:1:4: `.inf` is not a finite number, which is all we can hold; \
             quote it to use it as text",
        );
        check::<Value>("a: 1e999\n", "recipe.yaml:1:4: number `1e999` is too large");
    }

    // --- positions ----------------------------------------------------------

    const RECIPE: &str = "\
id: demo
trigger:
  source: github
  events: [push]
steps:
  - id: first
    call: slack.post
  - id: second
    call:   \"jira.create\"
    then:
      - type: log
        message:
  - id: third
    \"a/b~c\": [x,
      y]
list:
  -
  - b
";

    fn recipe_map() -> SourceMap {
        load_value(Path::new("recipe.yaml"), RECIPE).unwrap().1
    }

    #[track_caller]
    fn at(pos: Pos) -> (usize, usize) {
        (pos.line, pos.column)
    }

    #[test]
    fn locate_gives_the_value_and_locate_key_the_key() {
        let map = recipe_map();
        assert_eq!(at(map.locate("/steps/1/call")), (9, 13));
        assert_eq!(at(map.locate_key("/steps/1/call")), (9, 5));
        assert_eq!(at(map.locate("/steps/0/call")), (7, 11));
        assert_eq!(at(map.locate("/trigger/events/0")), (4, 12));
        assert_eq!(at(map.locate("/trigger/events")), (4, 11));
        // A block mapping starts at its first key, a list at its first `-`.
        assert_eq!(at(map.locate("/steps/1")), (8, 5));
        assert_eq!(at(map.locate("/steps")), (6, 3));
        assert_eq!(at(map.locate("")), (1, 1));
        // Keys that need escaping.
        let odd = pointer(&["steps", "2", "a/b~c"]);
        assert_eq!(at(map.locate(&odd)), (14, 14));
        assert_eq!(at(map.locate_key(&odd)), (14, 5));
        assert_eq!(at(map.locate(&format!("{odd}/1"))), (15, 7));
    }

    #[test]
    fn empty_values_point_at_their_key_or_dash() {
        let map = recipe_map();
        assert_eq!(at(map.locate("/steps/1/then/0/message")), (12, 9));
        assert_eq!(at(map.locate("/list/0")), (17, 3));
        assert_eq!(at(map.locate("/list/1")), (18, 5));
    }

    #[test]
    fn empty_list_items_point_at_their_dash() {
        for (yaml, null, want) in [
            ("l:\n  -\n  - b\n", "/l/0", (2, 3)),
            ("l:\n-\n- b\n", "/l/0", (2, 1)),
            ("l:\n  - b\n  -\nx: 1\n", "/l/1", (3, 3)),
            ("l:\n  - # nothing\n  # more\n\n  - b\n", "/l/0", (2, 3)),
            ("l:\n  - - a\n    -\n  - b\n", "/l/0/1", (3, 5)),
            ("l:\n  - -\n  - b\n", "/l/0/0", (2, 5)),
            ("- a\n-", "/1", (2, 1)),
        ] {
            let (value, map) = load_value(Path::new("t.yaml"), yaml).unwrap();
            assert_eq!(value.pointer(null), Some(&Value::Null), "{yaml:?}");
            assert_eq!(at(map.locate(null)), want, "{yaml:?}");
        }
    }

    #[test]
    fn missing_pointers_fall_back_to_the_nearest_ancestor() {
        let map = recipe_map();
        assert_eq!(at(map.locate("/steps/1/with")), (8, 5));
        assert_eq!(at(map.locate("/steps/7/call")), (6, 3));
        assert_eq!(at(map.locate("/nothing/here")), (1, 1));
        // Not a mapping entry: the key position falls back to the value.
        assert_eq!(at(map.locate_key("/steps/1")), (8, 5));
        assert_eq!(at(map.locate_key("/steps/1/nope")), (8, 5));
    }

    #[test]
    fn semantic_errors_are_located() {
        let map = recipe_map();
        assert_eq!(map.file(), Path::new("recipe.yaml"));
        let err = map.error("/steps/1/call", "unknown connector `jira`");
        assert_eq!(
            err.to_string(),
            "recipe.yaml:9:13: unknown connector `jira`"
        );
    }

    #[test]
    fn pointers_escape_tilde_and_slash() {
        assert_eq!(pointer(&["steps", "0", "call"]), "/steps/0/call");
        assert_eq!(pointer(&[]), "");
        assert_eq!(pointer(&["a/b", "~c", ""]), "/a~1b/~0c/");
    }

    #[test]
    fn did_you_mean_suggests_close_names_only() {
        assert_eq!(
            did_you_mean("hubspt", ["slack", "hubspot"]),
            Some("hubspot")
        );
        assert_eq!(did_you_mean("clal", ["call", "id"]), Some("call"));
        assert_eq!(did_you_mean("zendesk", ["slack", "hubspot"]), None);
        assert_eq!(did_you_mean("x", ["y", "id"]), None);
    }

    // --- errors from serde -------------------------------------------------

    #[test]
    fn unknown_field_points_at_the_key_with_a_hint() {
        check::<Recipe>(
            "id: a\nsteps:\n  - id: s\n    cal: x\n",
            "recipe.yaml:4:5: unknown field `cal`, expected one of `id`, `call`, `then`; \
             did you mean `call`?",
        );
        check::<Recipe>(
            "id: a\nsteps: []\nzzzzzz: 1\n",
            "recipe.yaml:3:1: unknown field `zzzzzz`, expected one of `id`, `trigger`, `steps`",
        );
    }

    #[test]
    fn missing_field_points_at_the_mapping() {
        check::<Recipe>(
            "id: a\nsteps:\n  - call: x\n",
            "recipe.yaml:3:5: missing field `id`",
        );
        check::<Recipe>(
            "id: a\ntrigger: {source: github}\nsteps: []\n",
            "recipe.yaml:2:10: missing field `events`",
        );
    }

    #[test]
    fn wrong_type_points_at_the_value() {
        check::<Recipe>(
            "id: a\ntrigger:\n  source: github\n  events: push\nsteps: []\n",
            "recipe.yaml:4:11: invalid type: string \"push\", expected a sequence",
        );
        check::<Recipe>(
            "id: a\ntrigger:\n  source: github\n  events:\n    -\n    - push\nsteps: []\n",
            "recipe.yaml:5:5: invalid type: null, expected a string",
        );
        check::<Recipe>(
            "hello\n",
            "recipe.yaml:1:1: invalid type: string \"hello\", expected struct Recipe",
        );
    }

    #[test]
    fn internally_tagged_enums_point_inside_the_variant() {
        let head = "id: a\nsteps:\n  - id: s\n    then:\n      - type: ";
        // serde_path_to_error stops at `then/0`; the offender is found below it.
        check::<Recipe>(
            &format!("{head}htpp\n        url: x\n"),
            "recipe.yaml:5:15: unknown variant `htpp`, expected `http` or `log`; \
             did you mean `http`?",
        );
        check::<Recipe>(
            &format!("{head}http\n        ulr: x\n"),
            "recipe.yaml:6:9: unknown field `ulr`, expected `url`; did you mean `url`?",
        );
        check::<Recipe>(
            &format!("{head}http\n        url: 5\n"),
            "recipe.yaml:6:14: invalid type: integer `5`, expected a string",
        );
        check::<Recipe>(
            &format!("{head}http\n"),
            "recipe.yaml:5:9: missing field `url`",
        );
        check::<Recipe>(
            "id: a\nsteps:\n  - id: s\n    then:\n      - url: x\n",
            "recipe.yaml:5:9: missing field `type`",
        );
    }

    // --- errors in the YAML itself -----------------------------------------

    #[test]
    fn duplicate_keys() {
        check::<Value>(
            "id: a\nsteps: []\nid: b\n",
            "recipe.yaml:3:1: duplicate key `id` (first set at line 1 column 1)",
        );
        check::<Value>(
            "a: {x: 1, x: 2}\n",
            "recipe.yaml:1:11: duplicate key `x` (first set at line 1 column 5)",
        );
    }

    #[test]
    fn syntax_errors() {
        check::<Value>(
            "a:\n\tb: 1\n",
            "recipe.yaml:2:2: invalid YAML: tabs disallowed within this context \
             (block indentation) (indent with spaces, not tabs)",
        );
        check::<Value>(
            "a:\n  b: 1\n c: 2\n",
            "recipe.yaml:3:3: invalid YAML: while parsing a block mapping, did not find \
             expected key (check the indentation of this line against the lines above)",
        );
        check::<Value>(
            "a: 1\n  b: 2\n",
            "recipe.yaml:2:4: invalid YAML: mapping values are not allowed in this context \
             (a key is indented wrongly, or a value containing `: ` needs quotes)",
        );
        check::<Value>(
            "a: 'x\n",
            "recipe.yaml:1:4: invalid YAML: while scanning a quoted scalar, found unexpected \
             end of stream (is a closing quote missing?)",
        );
        check::<Value>(
            "a: *nope\n",
            "recipe.yaml:1:4: invalid YAML: while parsing node, found unknown anchor \
             (define `&name` before using `*name`)",
        );
    }

    #[test]
    fn empty_files() {
        for text in ["", "\n\n", "# only a comment\n", "---\n", "---\n...\n"] {
            check::<Value>(text, "recipe.yaml:1:1: file is empty, expected a mapping");
        }
        // An explicit null is a value, for serde to judge.
        check::<Value>("null\n", "null");
        check::<Recipe>(
            "~\n",
            "recipe.yaml:1:1: invalid type: null, expected struct Recipe",
        );
    }

    #[test]
    fn two_documents() {
        let msg = "expected a single YAML document, found a second one (remove the `---` line)";
        check::<Value>("a: 1\n---\nb: 2\n", &format!("recipe.yaml:2:1: {msg}"));
        check::<Value>("---\na: 1\n---\n", &format!("recipe.yaml:3:1: {msg}"));
    }

    #[test]
    fn collections_as_keys() {
        check::<Value>(
            "? [a]\n: b\n",
            "recipe.yaml:1:3: expected a key name, found a list used as a key",
        );
        check::<Value>(
            "x: &m {a: 1}\n*m : 2\n",
            "recipe.yaml:2:1: expected a key name, found an alias to a collection",
        );
    }

    #[test]
    fn hostile_nesting_and_alias_bombs_fail_cleanly() {
        let deep = "[".repeat(200);
        check::<Value>(&deep, "recipe.yaml:1:65: nested more than 64 levels deep");
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let prev = format!("*a{}", i - 1);
            let items = [prev.as_str(); 10].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{items}]\n"));
        }
        let err = load_value(Path::new("recipe.yaml"), &bomb).unwrap_err();
        assert!(err.message.starts_with("file is too large"), "{err}");
        check::<Value>(
            "a: &x [1, *x]\n",
            "recipe.yaml:1:11: alias used inside the value it refers to",
        );
    }

    // --- never panics ---------------------------------------------------------

    /// Every node of a loaded value has its own entry in the source map.
    fn assert_every_node_is_mapped(value: &Value, path: &mut String, map: &SourceMap) {
        assert!(
            map.values.contains_key(path.as_str()),
            "no position for {path:?}"
        );
        let children: Vec<(String, &Value)> = match value {
            Value::Object(o) => o.iter().map(|(k, v)| (k.clone(), v)).collect(),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect(),
            _ => Vec::new(),
        };
        for (segment, child) in children {
            let len = path.len();
            push_segment(path, &segment);
            assert!(map.keys.contains_key(path.as_str()) || value.is_array());
            assert_every_node_is_mapped(child, path, map);
            path.truncate(len);
        }
    }

    fn yamlish() -> impl Strategy<Value = String> {
        let pieces = [
            "a",
            "b",
            "on",
            "1",
            "-1.5",
            "~",
            ": ",
            ":",
            "- ",
            "-",
            "\n",
            "  ",
            "\t",
            "[",
            "]",
            "{",
            "}",
            ", ",
            "'",
            "\"",
            "\\",
            "#",
            "&x ",
            "*x",
            "? ",
            "|",
            ">",
            "---\n",
            "...",
            "!!str ",
            "!!int ",
            "!t ",
            "%YAML 1.2\n",
            "\u{feff}",
            "é",
        ];
        prop::collection::vec(prop::sample::select(pieces.to_vec()), 0..80).prop_map(|v| v.concat())
    }

    fn never_panics(text: &str) {
        if let Ok((value, map)) = load_value(Path::new("fuzz.yaml"), text) {
            assert_every_node_is_mapped(&value, &mut String::new(), &map);
        }
        let _ = load::<Recipe>(Path::new("fuzz.yaml"), text);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn load_never_panics_on_any_string(text in any::<String>()) {
            never_panics(&text);
        }

        #[test]
        fn load_never_panics_on_printable_ascii(text in "[ -~\n\t]{0,300}") {
            never_panics(&text);
        }

        #[test]
        fn load_never_panics_on_yaml_like_text(text in yamlish()) {
            never_panics(&text);
        }
    }
}
