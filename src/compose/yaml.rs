//! A YAML document tree with a position on every node, built from saphyr-parser's events.
//!
//! Scalars keep their raw text (and whether they were plain), so interpolation works on what
//! the user wrote and typing happens later against the Compose schema. Aliases are expanded,
//! `<<` merge keys applied, tags (`!reset`, `!override`) kept.

use std::collections::HashMap;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle};

use super::error::LoadError;

/// Where a node starts: file, 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mark {
    pub file: Arc<str>,
    pub line: usize,
    pub col: usize,
}

impl Mark {
    pub fn synthetic(file: &Arc<str>) -> Mark {
        Mark {
            file: file.clone(),
            line: 0,
            col: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub kmark: Mark,
    pub val: Node,
}

#[derive(Debug, Clone, PartialEq)]
pub enum V {
    Null,
    /// Raw text; `true` when plain (unquoted), so `true`/`1` may be typed later.
    Scalar(String, bool),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub v: V,
    pub mark: Mark,
    /// A local tag such as `!reset` or `!override` (without the handle's `!`).
    pub tag: Option<String>,
}

impl Node {
    pub fn new(v: V, mark: Mark) -> Node {
        Node { v, mark, tag: None }
    }
    pub fn str(s: impl Into<String>, mark: Mark) -> Node {
        Node::new(V::Scalar(s.into(), false), mark)
    }
    pub fn map(entries: Vec<Entry>, mark: Mark) -> Node {
        Node::new(V::Map(entries), mark)
    }
    pub fn is_null(&self) -> bool {
        matches!(self.v, V::Null)
    }
    pub fn as_map(&self) -> Option<&Vec<Entry>> {
        match &self.v {
            V::Map(m) => Some(m),
            _ => None,
        }
    }
    pub fn as_map_mut(&mut self) -> Option<&mut Vec<Entry>> {
        match &mut self.v {
            V::Map(m) => Some(m),
            _ => None,
        }
    }
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?.iter().find(|e| e.key == key).map(|e| &e.val)
    }
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.as_map_mut()?
            .iter_mut()
            .find(|e| e.key == key)
            .map(|e| &mut e.val)
    }
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.as_map()?.iter().find(|e| e.key == key)
    }
    pub fn remove(&mut self, key: &str) -> Option<Node> {
        let m = self.as_map_mut()?;
        let i = m.iter().position(|e| e.key == key)?;
        Some(m.remove(i).val)
    }
    /// Insert or replace, keeping the position of an existing key.
    pub fn set(&mut self, key: &str, val: Node) {
        if let Some(m) = self.as_map_mut() {
            if let Some(e) = m.iter_mut().find(|e| e.key == key) {
                e.val = val;
            } else {
                let kmark = val.mark.clone();
                m.push(Entry {
                    key: key.to_string(),
                    kmark,
                    val,
                });
            }
        }
    }
    pub fn scalar(&self) -> Option<&str> {
        match &self.v {
            V::Scalar(s, _) => Some(s),
            _ => None,
        }
    }
    pub fn kind(&self) -> &'static str {
        match &self.v {
            V::Null => "null",
            V::Scalar(..) => "scalar",
            V::Seq(_) => "sequence",
            V::Map(_) => "mapping",
        }
    }
}

fn is_null_plain(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

/// Parse one YAML document (compose reads the first; more than one is an error).
/// `Ok(None)` for an empty stream (only comments).
///
/// go-yaml (compose) accepts continuation lines of a flow collection that are less indented
/// than YAML allows, such as a `]` under its key; saphyr rejects them with "invalid
/// indentation". Only then is the document parsed again with those lines indented enough
/// ([`indent_flow_lines`]): files that parse as they are never go through the rewrite.
pub fn parse(src: &str, file: &Arc<str>) -> Result<Option<Node>, LoadError> {
    match parse_exact(src, file) {
        Err(e) if matches!(&e, LoadError::Yaml { message, .. } if message.contains("indentation")) =>
        {
            match indent_flow_lines(src) {
                // Report the original error, positioned in the original text.
                Some(fixed) => parse_exact(&fixed, file).map_err(|_| e),
                None => Err(e),
            }
        }
        r => r,
    }
}

/// Indent every line that continues a flow collection (`[` / `{` opened on an earlier line) to
/// one column past the content of the line that opened it, as go-yaml tolerates. Quotes,
/// comments and block scalars are skipped; line breaks are kept, so line numbers stay true.
/// `None` when nothing needed a change.
pub fn indent_flow_lines(src: &str) -> Option<String> {
    let mut out = String::with_capacity(src.len() + 64);
    let mut depth = 0usize;
    let mut min_indent = 0usize;
    let mut quote: Option<char> = None;
    let mut block_scalar: Option<usize> = None;
    let mut changed = false;
    for line in src.split_inclusive('\n') {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let body = line.trim_end_matches(['\n', '\r']);
        if let Some(parent) = block_scalar {
            if body.trim().is_empty() || indent > parent {
                out.push_str(line);
                continue;
            }
            block_scalar = None;
        }
        let mut line_out = line.to_string();
        if depth > 0 && quote.is_none() && indent < min_indent && !body.trim().is_empty() {
            line_out = format!("{}{}", " ".repeat(min_indent), &line[indent..]);
            changed = true;
        }
        // Where a value can start at depth 0: after `- ` markers and a `key:`.
        let bytes: Vec<char> = body.chars().collect();
        let mut i = 0;
        let mut value_start = depth == 0;
        let mut content_col = indent;
        while i < bytes.len() {
            let c = bytes[i];
            if let Some(q) = quote {
                if q == '"' && c == '\\' {
                    i += 2;
                    continue;
                }
                if c == q {
                    if q == '\'' && bytes.get(i + 1) == Some(&'\'') {
                        i += 2;
                        continue;
                    }
                    quote = None;
                }
                i += 1;
                continue;
            }
            match c {
                '#' if i == 0 || bytes[i - 1] == ' ' || bytes[i - 1] == '\t' => break,
                '"' | '\'' if depth > 0 || value_start || i == indent => quote = Some(c),
                '[' | '{' if depth > 0 || value_start => {
                    if depth == 0 {
                        min_indent = content_col + 1;
                    }
                    depth += 1;
                }
                ']' | '}' if depth > 0 => depth -= 1,
                '-' if depth == 0 && bytes.get(i + 1).is_none_or(|n| *n == ' ') && value_start => {
                    content_col = i + 2;
                }
                ':' if depth == 0 && bytes.get(i + 1).is_none_or(|n| *n == ' ') => {
                    value_start = true;
                }
                ' ' | '\t' => {}
                '&' | '!' if depth == 0 && value_start => {
                    // An anchor or tag before the value: skip the token.
                    while i + 1 < bytes.len() && bytes[i + 1] != ' ' {
                        i += 1;
                    }
                }
                '|' | '>' if depth == 0 && value_start => {
                    block_scalar = Some(indent);
                    break;
                }
                _ if depth == 0 => {
                    value_start = false;
                    if i == indent || bytes[..i].iter().all(|c| *c == ' ' || *c == '-') {
                        content_col = i;
                    }
                    // A plain key or scalar: run to its end (a `:` may follow).
                    while i + 1 < bytes.len()
                        && !(bytes[i + 1] == ':' && bytes.get(i + 2).is_none_or(|n| *n == ' '))
                        && !(bytes[i + 1] == ' ' && bytes.get(i + 2) == Some(&'#'))
                    {
                        i += 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        out.push_str(&line_out);
    }
    changed.then_some(out)
}

fn parse_exact(src: &str, file: &Arc<str>) -> Result<Option<Node>, LoadError> {
    let mut b = Builder {
        file: file.clone(),
        anchors: HashMap::new(),
        stack: Vec::new(),
        docs: Vec::new(),
        alias_expansions: 0,
    };
    let mut parser = Parser::new_from_str(src);
    loop {
        let ev = match parser.next_event() {
            None => break,
            Some(Err(e)) => {
                let m = e.marker();
                return Err(LoadError::Yaml {
                    file: file.to_string(),
                    line: m.line(),
                    col: m.col() + 1,
                    message: e.info().to_string(),
                });
            }
            Some(Ok(ev)) => ev,
        };
        let (ev, span) = ev;
        let mark = Mark {
            file: file.clone(),
            line: span.start.line(),
            col: span.start.col() + 1,
        };
        match ev {
            Event::StreamEnd => break,
            Event::StreamStart | Event::DocumentStart(_) | Event::DocumentEnd | Event::Nothing => {}
            Event::Alias(id) => {
                let (node, size) = match b.anchors.get(&id) {
                    Some((n, size)) => (n.clone(), *size),
                    None => return Err(b.err(&mark, "unknown anchor")),
                };
                // Billion-laughs guard: aliases may not expand the tree beyond a budget.
                b.alias_expansions += size;
                if b.alias_expansions > 1_000_000 {
                    return Err(b.err(&mark, "aliases expand to too large a document"));
                }
                b.push_value(node, 0, &mark)?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                let plain = matches!(style, ScalarStyle::Plain);
                let tag = tag.map(|t| t.suffix.to_string());
                let v = if (plain && is_null_plain(&text) && tag.is_none())
                    || tag.as_deref() == Some("null")
                {
                    V::Null
                } else {
                    // `!!str 1` is a string: treat core-schema str tags as quoted.
                    let plain = plain && tag.as_deref() != Some("str");
                    V::Scalar(text.into_owned(), plain)
                };
                let tag = tag.filter(|t| t == "reset" || t == "override");
                let node = Node {
                    v,
                    mark: mark.clone(),
                    tag,
                };
                b.push_value(node, anchor, &mark)?;
            }
            Event::SequenceStart(anchor, tag) => {
                b.open(
                    V::Seq(Vec::new()),
                    anchor,
                    tag.map(|t| t.suffix.to_string()),
                    &mark,
                )?;
            }
            Event::MappingStart(anchor, tag) => {
                b.open(
                    V::Map(Vec::new()),
                    anchor,
                    tag.map(|t| t.suffix.to_string()),
                    &mark,
                )?;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let mut f = b.stack.pop().expect("balanced events");
                if !f.merges.is_empty() {
                    apply_merges(&mut f.node, std::mem::take(&mut f.merges), &b.file)?;
                }
                let m = f.node.mark.clone();
                b.push_value(f.node, f.anchor, &m)?;
            }
        }
    }
    if b.docs.len() > 1 {
        let m = &b.docs[1].mark;
        return Err(b.err(m, "multiple YAML documents in one compose file"));
    }
    Ok(b.docs.pop())
}

struct Frame {
    node: Node,
    anchor: usize,
    pending_key: Option<(String, Mark)>,
    merges: Vec<Node>,
}

struct Builder {
    file: Arc<str>,
    /// Anchored nodes with their size in nodes.
    anchors: HashMap<usize, (Node, usize)>,
    stack: Vec<Frame>,
    docs: Vec<Node>,
    alias_expansions: usize,
}

impl Builder {
    /// Start a collection node (sequence or mapping); nesting is bounded.
    fn open(
        &mut self,
        v: V,
        anchor: usize,
        tag: Option<String>,
        mark: &Mark,
    ) -> Result<(), LoadError> {
        self.stack.push(Frame {
            node: Node {
                v,
                mark: mark.clone(),
                tag,
            },
            anchor,
            pending_key: None,
            merges: Vec::new(),
        });
        if self.stack.len() > 512 {
            return Err(self.err(mark, "document nested too deeply"));
        }
        Ok(())
    }

    fn err(&self, mark: &Mark, msg: &str) -> LoadError {
        LoadError::Yaml {
            file: self.file.to_string(),
            line: mark.line,
            col: mark.col,
            message: msg.to_string(),
        }
    }

    fn push_value(&mut self, node: Node, anchor: usize, mark: &Mark) -> Result<(), LoadError> {
        if anchor != 0 {
            let size = node_size(&node);
            self.anchors.insert(anchor, (node.clone(), size));
        }
        let Some(top) = self.stack.last_mut() else {
            self.docs.push(node);
            return Ok(());
        };
        match &mut top.node.v {
            V::Seq(items) => items.push(node),
            V::Map(entries) => match top.pending_key.take() {
                None => {
                    let key = match &node.v {
                        V::Scalar(s, _) => s.clone(),
                        V::Null => "null".to_string(),
                        _ => {
                            let msg = "mapping keys must be scalars";
                            return Err(LoadError::Yaml {
                                file: self.file.to_string(),
                                line: mark.line,
                                col: mark.col,
                                message: msg.into(),
                            });
                        }
                    };
                    top.pending_key = Some((key, node.mark));
                }
                Some((key, kmark)) => {
                    if key == "<<" {
                        top.merges.push(node);
                    } else if entries.iter().any(|e| e.key == key) {
                        return Err(LoadError::Yaml {
                            file: self.file.to_string(),
                            line: kmark.line,
                            col: kmark.col,
                            message: format!("mapping key {key:?} already defined"),
                        });
                    } else {
                        entries.push(Entry {
                            key,
                            kmark,
                            val: node,
                        });
                    }
                }
            },
            _ => unreachable!("only collections are on the stack"),
        }
        Ok(())
    }
}

fn node_size(n: &Node) -> usize {
    match &n.v {
        V::Seq(items) => 1 + items.iter().map(node_size).sum::<usize>(),
        V::Map(m) => 1 + m.iter().map(|e| 1 + node_size(&e.val)).sum::<usize>(),
        _ => 1,
    }
}

/// `<<: *a` or `<<: [*a, *b]`: keys not already present are added (earlier sources win).
fn apply_merges(node: &mut Node, merges: Vec<Node>, file: &Arc<str>) -> Result<(), LoadError> {
    let Some(entries) = node.as_map_mut() else {
        return Ok(());
    };
    for m in merges {
        let sources: Vec<Node> = match m.v {
            V::Map(_) => vec![m],
            V::Seq(items) => items,
            _ => {
                return Err(LoadError::Yaml {
                    file: file.to_string(),
                    line: m.mark.line,
                    col: m.mark.col,
                    message: "merge key `<<` needs a mapping or a list of mappings".into(),
                })
            }
        };
        for s in sources {
            let V::Map(src) = s.v else {
                return Err(LoadError::Yaml {
                    file: file.to_string(),
                    line: s.mark.line,
                    col: s.mark.col,
                    message: "merge key `<<` needs a mapping or a list of mappings".into(),
                });
            };
            for e in src {
                if !entries.iter().any(|x| x.key == e.key) {
                    entries.push(e);
                }
            }
        }
    }
    Ok(())
}

/// Emit a node as block YAML (2-space indent, lists indented under their key like compose).
pub fn emit(node: &Node) -> String {
    let mut out = String::new();
    match &node.v {
        V::Map(m) if !m.is_empty() => emit_map(m, 0, &mut out),
        V::Seq(s) if !s.is_empty() => emit_seq(s, 0, &mut out),
        _ => {
            out.push_str(&inline(node));
            out.push('\n');
        }
    }
    out
}

/// Emit a node as JSON (2-space indent, like `json.MarshalIndent`); plain scalars are the
/// numbers, booleans and nulls of a tree read from JSON, written as they are.
pub fn emit_json(node: &Node) -> String {
    let mut out = String::new();
    json_value(node, 0, &mut out);
    out
}

fn json_value(n: &Node, indent: usize, out: &mut String) {
    let pad = |k: usize| " ".repeat(k);
    match &n.v {
        V::Null => out.push_str("null"),
        V::Scalar(s, true) => out.push_str(s),
        V::Scalar(s, false) => out.push_str(&serde_json::to_string(s).unwrap_or_default()),
        V::Seq(items) if items.is_empty() => out.push_str("[]"),
        V::Map(m) if m.is_empty() => out.push_str("{}"),
        V::Seq(items) => {
            out.push_str("[\n");
            for (i, it) in items.iter().enumerate() {
                out.push_str(&pad(indent + 2));
                json_value(it, indent + 2, out);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(indent));
            out.push(']');
        }
        V::Map(m) => {
            out.push_str("{\n");
            for (i, e) in m.iter().enumerate() {
                out.push_str(&pad(indent + 2));
                out.push_str(&serde_json::to_string(&e.key).unwrap_or_default());
                out.push_str(": ");
                json_value(&e.val, indent + 2, out);
                out.push_str(if i + 1 < m.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(indent));
            out.push('}');
        }
    }
}

fn inline(node: &Node) -> String {
    match &node.v {
        V::Null => "null".into(),
        V::Scalar(s, plain) => {
            if *plain {
                s.clone()
            } else {
                quote(s)
            }
        }
        V::Seq(_) => "[]".into(),
        V::Map(_) => "{}".into(),
    }
}

fn emit_map(m: &[Entry], indent: usize, out: &mut String) {
    for e in m {
        out.push_str(&" ".repeat(indent));
        out.push_str(&quote_key(&e.key));
        out.push(':');
        emit_child(&e.val, indent, out);
    }
}

fn emit_seq(s: &[Node], indent: usize, out: &mut String) {
    for n in s {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match &n.v {
            V::Map(m) if !m.is_empty() => {
                // First entry on the dash line, the rest aligned under it.
                let mut sub = String::new();
                emit_map(m, indent + 2, &mut sub);
                out.push(' ');
                out.push_str(&sub[indent + 2..]);
            }
            V::Seq(s2) if !s2.is_empty() => {
                out.push('\n');
                emit_seq(s2, indent + 2, out);
            }
            _ => {
                out.push(' ');
                emit_scalar_value(n, indent + 2, out);
            }
        }
    }
}

fn emit_child(n: &Node, indent: usize, out: &mut String) {
    match &n.v {
        V::Map(m) if !m.is_empty() => {
            out.push('\n');
            emit_map(m, indent + 2, out);
        }
        V::Seq(s) if !s.is_empty() => {
            out.push('\n');
            emit_seq(s, indent + 2, out);
        }
        _ => {
            out.push(' ');
            emit_scalar_value(n, indent + 2, out);
        }
    }
}

fn emit_scalar_value(n: &Node, indent: usize, out: &mut String) {
    if let V::Scalar(s, false) = &n.v {
        if s.contains('\n') && !s.contains('\r') && block_safe(s) {
            let chomp = if s.ends_with('\n') {
                if s.ends_with("\n\n") {
                    "+"
                } else {
                    ""
                }
            } else {
                "-"
            };
            let lead = if s.starts_with(' ') { "2" } else { "" };
            out.push('|');
            out.push_str(lead);
            out.push_str(chomp);
            out.push('\n');
            let body = s.strip_suffix('\n').unwrap_or(s);
            for line in body.split('\n') {
                if !line.is_empty() {
                    out.push_str(&" ".repeat(indent));
                    out.push_str(line);
                }
                out.push('\n');
            }
            return;
        }
    }
    out.push_str(&inline(n));
    out.push('\n');
}

fn block_safe(s: &str) -> bool {
    s.chars()
        .all(|c| c == '\n' || c == '\t' || (!c.is_control() && c != '\u{feff}'))
        && !s.starts_with('\n')
}

fn quote_key(k: &str) -> String {
    quote(k)
}

/// Quote a string only when YAML would read it as something else.
pub fn quote(s: &str) -> String {
    if needs_quotes(s) {
        let mut q = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => q.push_str("\\\""),
                '\\' => q.push_str("\\\\"),
                '\n' => q.push_str("\\n"),
                '\t' => q.push_str("\\t"),
                '\r' => q.push_str("\\r"),
                c if c.is_control() || c == '\u{feff}' => {
                    q.push_str(&format!("\\u{:04X}", c as u32));
                }
                c => q.push(c),
            }
        }
        q.push('"');
        q
    } else {
        s.to_string()
    }
}

fn needs_quotes(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let lower = s.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "null"
            | "~"
            | "true"
            | "false"
            | "yes"
            | "no"
            | "on"
            | "off"
            | "y"
            | "n"
            | ".inf"
            | "-.inf"
            | "+.inf"
            | ".nan"
    ) {
        return true;
    }
    if looks_numeric(s) {
        return true;
    }
    let first = s.chars().next().unwrap_or(' ');
    if "-?:,[]{}#&*!|>'\"%@`".contains(first) {
        // `-foo` and `:foo` are fine as plain scalars only when followed by a non-space.
        let second = s.chars().nth(1);
        let safe_indicator =
            (first == '-' || first == '?' || first == ':') && second.is_some_and(|c| c != ' ');
        if !safe_indicator {
            return true;
        }
    }
    if s.starts_with(' ') || s.ends_with(' ') || s.ends_with(':') {
        return true;
    }
    if s.contains(": ") || s.contains(" #") || s.contains('\n') || s.contains('\t') {
        return true;
    }
    if s.starts_with("---") || s.starts_with("...") {
        return true;
    }
    s.chars().any(|c| c.is_control() || c == '\u{feff}')
}

/// Would YAML read this plain scalar as a number (int, float, YAML 1.1 sexagesimal)?
fn looks_numeric(s: &str) -> bool {
    let t = s.strip_prefix(['+', '-']).unwrap_or(s);
    if t.is_empty() {
        return false;
    }
    let digits = |x: &str| !x.is_empty() && x.chars().all(|c| c.is_ascii_digit() || c == '_');
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0o")) {
        return !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit() || c == '_');
    }
    if let Some(b) = t.strip_prefix("0b") {
        return !b.is_empty() && b.chars().all(|c| c == '0' || c == '1' || c == '_');
    }
    if digits(t) {
        return true;
    }
    // float: digits[.digits][e[+-]digits] or .digits
    let (mant, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let mant_ok = match mant.split_once('.') {
        Some((a, b)) => {
            (a.is_empty() || digits(a))
                && (b.is_empty() || digits(b))
                && !(a.is_empty() && b.is_empty())
        }
        None => digits(mant),
    };
    let exp_ok = match exp {
        None => true,
        Some(e) => digits(e.strip_prefix(['+', '-']).unwrap_or(e)),
    };
    if mant_ok && exp_ok {
        return true;
    }
    // sexagesimal (YAML 1.1): 1:20, 190:20:30
    let parts: Vec<&str> = t.split(':').collect();
    parts.len() > 1 && parts.iter().all(|p| digits(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Node {
        parse(s, &Arc::from("t.yaml")).unwrap().unwrap()
    }

    #[test]
    fn flow_sequence_with_comments_and_a_dedented_close_is_accepted() {
        // As go-yaml (docker compose) reads it; saphyr alone says "invalid indentation".
        let src = "services:\n  web:\n    healthcheck:\n      test: [\n        \"CMD\",\n        # the probe\n        \"curl\", \"-f\",\n        # its target\n        \"http://x/#a\"\n    ]\n    image: \"a [b\"\n";
        let n = p(src);
        let test = n
            .get("services")
            .and_then(|s| s.get("web"))
            .and_then(|w| w.get("healthcheck"))
            .and_then(|h| h.get("test"))
            .unwrap();
        let V::Seq(items) = &test.v else {
            panic!("not a sequence: {test:?}")
        };
        let items: Vec<_> = items.iter().map(|i| i.scalar().unwrap()).collect();
        assert_eq!(items, ["CMD", "curl", "-f", "http://x/#a"]);
        // Positions stay those of the original text.
        let image = n
            .get("services")
            .unwrap()
            .get("web")
            .unwrap()
            .entry("image")
            .unwrap();
        assert_eq!(image.kmark.line, 11);
        // Under a list item and in a flow mapping too.
        let n = p("x:\n  - {a: 1,\n  # c\n  b: 2\n  }\n");
        let V::Seq(items) = &n.get("x").unwrap().v else {
            panic!()
        };
        assert_eq!(items[0].get("b").unwrap().scalar(), Some("2"));
        // Block scalars are text, not flow collections.
        let n = p("a: |\n  [x\nb: [1,\n 2]\n");
        assert_eq!(n.get("a").unwrap().scalar(), Some("[x\n"));
        // Nothing to fix: no rewrite.
        assert_eq!(indent_flow_lines("a: [1, 2]\nb: c\n"), None);
        // A real indentation error is still reported where it is.
        assert!(parse("a:\n  b: 1\n c: 2\n", &Arc::from("t.yaml")).is_err());
    }

    #[test]
    fn positions_are_one_based() {
        let n = p("a:\n  b: 1\n");
        let e = n.get("a").unwrap().entry("b").unwrap();
        assert_eq!((e.kmark.line, e.kmark.col), (2, 3));
        assert_eq!((e.val.mark.line, e.val.mark.col), (2, 6));
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let n = p("x: &a {k: 1, j: 2}\ny:\n  <<: *a\n  k: 3\nz: *a\n");
        let y = n.get("y").unwrap();
        assert_eq!(y.get("k").unwrap().scalar(), Some("3"));
        assert_eq!(y.get("j").unwrap().scalar(), Some("2"));
        assert_eq!(n.get("z").unwrap().get("k").unwrap().scalar(), Some("1"));
        let n = p("a: &a {k: 1}\nb: &b {k: 2, m: 3}\nc:\n  <<: [*a, *b]\n");
        let c = n.get("c").unwrap();
        assert_eq!(c.get("k").unwrap().scalar(), Some("1"));
        assert_eq!(c.get("m").unwrap().scalar(), Some("3"));
    }

    #[test]
    fn nulls_tags_and_quoting() {
        let n = p("a:\nb: ~\nc: 'null'\nd: !reset []\ne: !override {x: 1}\n");
        assert!(n.get("a").unwrap().is_null());
        assert!(n.get("b").unwrap().is_null());
        assert_eq!(
            n.get("c").unwrap().v,
            V::Scalar("null".into(), false),
            "quoted null is a string"
        );
        assert_eq!(n.get("d").unwrap().tag.as_deref(), Some("reset"));
        assert_eq!(n.get("e").unwrap().tag.as_deref(), Some("override"));
    }

    #[test]
    fn errors_carry_positions() {
        let e = parse("a: 1\na: 2\n", &Arc::from("t.yaml")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.yaml:2:1: mapping key \"a\" already defined"
        );
        let e = parse("a: [1, 2\n", &Arc::from("t.yaml")).unwrap_err();
        assert!(e.to_string().starts_with("t.yaml:"), "{e}");
        assert!(parse("# only a comment\n", &Arc::from("t.yaml"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn quoting_follows_yaml_resolution() {
        for q in [
            "1", "1.5", "1e3", "0x1F", "true", "no", "null", "", " a", "a: b", "80:80", "-", "*x",
            "#c",
        ] {
            assert!(needs_quotes(q), "{q:?} must be quoted");
        }
        for p in [
            "127.0.0.1",
            "1.2.3.4:80",
            "nginx:latest",
            "a b",
            "/x/y",
            "-p",
            "1m30s",
            "::1",
        ] {
            assert!(!needs_quotes(p), "{p:?} needs no quotes");
        }
    }

    #[test]
    fn alias_bombs_are_rejected() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = format!("*a{}", i - 1);
            src.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        let e = parse(&src, &Arc::from("t.yaml")).unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
    }

    #[test]
    fn emit_round_trips() {
        let src = "a:\n  b:\n    - x\n    - k: \"1\"\n      j: \"true\"\n  c: \"\"\n  d: |\n    line1\n    line2\n";
        let n = p(src);
        let out = emit(&n);
        assert_eq!(out, src);
        assert_eq!(p(&out), n);
    }
}
