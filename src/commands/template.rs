//! `--format` as the docker CLI reads it: `table` (the command's default columns), `json` (one
//! JSON object per line), `table TEMPLATE` (a header row, then the template per row, cells
//! aligned like Go's tabwriter) or a bare Go template per row. The templates scripts use are
//! supported: `{{.Field}}`, `{{.A.B}}`, `{{json .Field}}`, `{{json .}}`, `{{upper .F}}`,
//! `{{lower .F}}`, `{{title .F}}`, `{{index .Labels "k"}}`, and `\t`/`\n` escapes. Anything else
//! (`range`, `if`, pipelines) is a clear error, never a silently wrong line.

use anyhow::{anyhow, bail};
use serde_json::Value;

/// How to print rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// The command's default table.
    Table,
    /// One JSON object per line.
    Json,
    /// `table TEMPLATE`.
    TableTemplate(Template),
    /// A bare template, no header.
    Template(Template),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// A function (`json`, `upper`...) or none, the field path (empty = `.`), extra args.
    Field(Option<String>, Vec<String>, Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

pub fn parse(s: &str) -> anyhow::Result<Format> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("table") || t.is_empty() {
        return Ok(Format::Table);
    }
    if t.eq_ignore_ascii_case("json") {
        return Ok(Format::Json);
    }
    if let Some(rest) = t.strip_prefix("table ") {
        return Ok(Format::TableTemplate(Template::parse(rest.trim())?));
    }
    if !t.contains("{{") {
        bail!("invalid --format {s:?}: want table, json, or a Go template such as '{{{{.Name}}}}'");
    }
    Ok(Format::Template(Template::parse(t)?))
}

impl Template {
    pub fn parse(src: &str) -> anyhow::Result<Template> {
        let src = src.replace("\\t", "\t").replace("\\n", "\n");
        let mut parts = Vec::new();
        let mut rest = src.as_str();
        while let Some(i) = rest.find("{{") {
            if i > 0 {
                parts.push(Part::Text(rest[..i].to_string()));
            }
            let after = &rest[i + 2..];
            let j = after
                .find("}}")
                .ok_or_else(|| anyhow!("unclosed {{{{ in --format {src:?}"))?;
            let action = after[..j]
                .trim()
                .trim_start_matches('-')
                .trim_end_matches('-');
            parts.push(parse_action(action.trim(), &src)?);
            rest = &after[j + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The header of a `table TEMPLATE`: each field's name in capitals, as the docker CLI's
    /// header contexts mostly spell them (`RunningFor` → `CREATED`, `ID` → `CONTAINER ID`…).
    pub fn header(&self, names: &dyn Fn(&str) -> Option<&'static str>) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(_, path, _) => {
                    let last = path.last().map(String::as_str).unwrap_or("");
                    out.push_str(
                        &names(last)
                            .map(str::to_string)
                            .unwrap_or_else(|| split_camel(last).to_uppercase()),
                    );
                }
            }
        }
        out
    }

    pub fn render(&self, v: &Value) -> anyhow::Result<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(func, path, args) => {
                    let mut cur = v;
                    for k in path {
                        cur = cur
                            .get(k)
                            .ok_or_else(|| anyhow!("template: can't evaluate field {k}"))?;
                    }
                    let s = match func.as_deref() {
                        None => plain(cur),
                        Some("json") => serde_json::to_string(cur)?,
                        Some("upper") => plain(cur).to_uppercase(),
                        Some("lower") => plain(cur).to_lowercase(),
                        Some("title") => {
                            let p = plain(cur);
                            let mut c = p.chars();
                            match c.next() {
                                Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                                None => String::new(),
                            }
                        }
                        Some("index") => {
                            let key = args.first().map(String::as_str).unwrap_or("");
                            cur.get(key).map(plain).unwrap_or_default()
                        }
                        Some(f) => bail!("template: function {f:?} not defined"),
                    };
                    out.push_str(&s);
                }
            }
        }
        Ok(out)
    }
}

fn parse_action(a: &str, src: &str) -> anyhow::Result<Part> {
    let words: Vec<&str> = a.split_whitespace().collect();
    let (func, field, args) = match words.as_slice() {
        [f] if f.starts_with('.') => (None, *f, vec![]),
        [func, f, rest @ ..] if f.starts_with('.') => (
            Some(func.to_string()),
            *f,
            rest.iter()
                .map(|s| s.trim_matches('"').to_string())
                .collect(),
        ),
        _ => bail!("unsupported template action {{{{{a}}}}} in --format {src:?} (berth supports {{{{.Field}}}}, {{{{json .}}}}, upper, lower, title, index)"),
    };
    if let Some(f) = &func {
        if !matches!(f.as_str(), "json" | "upper" | "lower" | "title" | "index") {
            bail!("unsupported template function {f:?} in --format {src:?} (berth supports {{{{.Field}}}}, json, upper, lower, title, index)");
        }
    }
    let path: Vec<String> = field
        .split('.')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    Ok(Part::Field(func, path, args))
}

/// How Go's text/template prints a value.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<no value>".into(),
        Value::Array(a) => format!("[{}]", a.iter().map(plain).collect::<Vec<_>>().join(" ")),
        Value::Object(m) => format!(
            "map[{}]",
            m.iter()
                .map(|(k, v)| format!("{k}:{}", plain(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        other => other.to_string(),
    }
}

fn split_camel(s: &str) -> String {
    let mut out = String::new();
    let cs: Vec<char> = s.chars().collect();
    for (i, c) in cs.iter().enumerate() {
        if i > 0
            && c.is_uppercase()
            && (cs[i - 1].is_lowercase() || cs.get(i + 1).is_some_and(|n| n.is_lowercase()))
        {
            out.push(' ');
        }
        out.push(*c);
    }
    out
}

/// Align tab-separated cells the way the docker CLI's tabwriter does (min width 10, padding 3).
pub fn tabulate(lines: &[String]) -> String {
    let rows: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut w = vec![0usize; cols];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i + 1 < r.len() {
                w[i] = w[i].max(c.chars().count() + 3).max(10);
            }
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 < r.len() {
                line.push_str(&format!("{c:<w$}", w = w[i]));
            } else {
                line.push_str(c);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Print `rows` in `format`; `table` is handled by the caller (`Ok(false)`).
pub fn print(
    format: &Format,
    rows: &[Value],
    names: &dyn Fn(&str) -> Option<&'static str>,
) -> anyhow::Result<bool> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match format {
        Format::Table => return Ok(false),
        Format::Json => {
            for r in rows {
                writeln!(out, "{}", serde_json::to_string(r)?)?;
            }
        }
        Format::Template(t) => {
            for r in rows {
                writeln!(out, "{}", t.render(r)?)?;
            }
        }
        Format::TableTemplate(t) => {
            let mut lines = vec![t.header(names)];
            for r in rows {
                lines.push(t.render(r)?);
            }
            write!(out, "{}", tabulate(&lines))?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_functions_and_escapes() {
        let v = json!({"Name": "p-web-1", "State": "running", "Labels": {"a": "b"},
                       "Publishers": [{"URL": "0.0.0.0", "PublishedPort": 8080}]});
        let Format::Template(t) = parse("{{.Name}}\\t{{ .State }}").unwrap() else {
            panic!()
        };
        assert_eq!(t.render(&v).unwrap(), "p-web-1\trunning");
        let Format::Template(t) = parse("{{json .Publishers}} {{upper .State}}").unwrap() else {
            panic!()
        };
        assert_eq!(
            t.render(&v).unwrap(),
            r#"[{"PublishedPort":8080,"URL":"0.0.0.0"}] RUNNING"#
        );
        let Format::Template(t) = parse(r#"{{index .Labels "a"}}"#).unwrap() else {
            panic!()
        };
        assert_eq!(t.render(&v).unwrap(), "b");
        let Format::Template(t) = parse("{{json .}}").unwrap() else {
            panic!()
        };
        assert_eq!(
            serde_json::from_str::<Value>(&t.render(&v).unwrap()).unwrap(),
            v
        );
        assert!(parse("{{range .Publishers}}x{{end}}").is_err());
        assert!(parse("{{printf .Name}}").is_err());
        assert!(parse("nonsense").is_err());
        let Format::Template(t) = parse("{{.Missing}}").unwrap() else {
            panic!()
        };
        assert!(t.render(&v).is_err());
        assert_eq!(parse("json").unwrap(), Format::Json);
        assert_eq!(parse("table").unwrap(), Format::Table);
    }

    #[test]
    fn table_templates_have_a_header_and_aligned_columns() {
        let Format::TableTemplate(t) =
            parse("table {{.Name}}\\t{{.RunningFor}}\\t{{.State}}").unwrap()
        else {
            panic!()
        };
        let names = |f: &str| (f == "RunningFor").then_some("CREATED");
        assert_eq!(t.header(&names), "NAME\tCREATED\tSTATE");
        let out = tabulate(&[
            t.header(&names),
            t.render(&json!({"Name": "a-very-long-name-1", "RunningFor": "1s", "State": "up"}))
                .unwrap(),
        ]);
        assert_eq!(
            out,
            "NAME                 CREATED   STATE\na-very-long-name-1   1s        up\n"
        );
        assert_eq!(split_camel("LocalVolumes"), "Local Volumes");
        assert_eq!(split_camel("ID"), "ID");
    }
}
