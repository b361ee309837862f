//! A Dockerfile parser following the Dockerfile reference: parser directives (`# escape=`,
//! `# syntax=`), line continuations with the escape character, comments, heredocs (`<<EOF`,
//! `<<-EOF`, quoted delimiters), `--flag=value` options, JSON exec form versus shell form, and
//! the word lexer with Docker's variable substitution (`$v`, `${v}`, `${v:-x}`, `${v-x}`,
//! `${v:+x}`, `${v+x}`, `${v:?msg}`, quotes and escapes).
//!
//! No crate fits: `dockerfile-parser` (pest, last release 2021) has no heredocs, no escape
//! directive and no substitution rules.

use std::collections::BTreeMap;
use std::fmt;

/// An error in a Dockerfile, at a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.msg)
    }
}

impl std::error::Error for ParseError {}

fn err<T>(line: usize, msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        line,
        msg: msg.into(),
    })
}

/// `--name[=value]` options of an instruction.
pub type Flags = Vec<(String, Option<String>)>;

/// A heredoc attached to an instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word (`EOF`).
    pub name: String,
    /// The body, without the terminator line (each line ends with `\n`).
    pub content: String,
    /// The delimiter was quoted (`<<'EOF'`, `<<"EOF"`): no expansion in the body.
    pub quoted: bool,
    /// `<<-EOF`: leading tabs were stripped.
    pub strip_tabs: bool,
}

/// One instruction: its keyword (upper case), `--flags`, the rest of the line and heredocs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line of the keyword.
    pub line: usize,
    pub keyword: String,
    /// `--name=value` options in order (a bare `--name` has `None`).
    pub flags: Flags,
    /// The arguments after the flags, continuation lines joined (escape + newline removed).
    pub args: String,
    pub heredocs: Vec<Heredoc>,
    /// The whole instruction as written (continuations joined), for history and cache keys.
    pub original: String,
}

impl Instruction {
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref().unwrap_or(""))
    }
    pub fn flag_all(&self, name: &str) -> Vec<&str> {
        self.flags
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref().unwrap_or(""))
            .collect()
    }
    /// Refuse flags not in `allowed`.
    pub fn check_flags(&self, allowed: &[&str]) -> Result<(), ParseError> {
        for (n, _) in &self.flags {
            if !allowed.contains(&n.as_str()) {
                return err(
                    self.line,
                    format!("unknown flag --{n} for {}", self.keyword),
                );
            }
        }
        Ok(())
    }
    /// The exec form (`["a", "b"]`) if the arguments are a JSON array of strings.
    pub fn json_args(&self) -> Option<Vec<String>> {
        parse_json_array(&self.args)
    }
}

/// A command in exec form (no shell) or shell form (run with the SHELL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdForm {
    Exec(Vec<String>),
    Shell(String),
}

pub fn parse_json_array(s: &str) -> Option<Vec<String>> {
    let t = s.trim();
    if !t.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(t).ok()
}

impl Instruction {
    pub fn cmd_form(&self) -> CmdForm {
        match self.json_args() {
            Some(v) => CmdForm::Exec(v),
            None => CmdForm::Shell(self.args.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub escape: char,
    /// `# syntax=` (the frontend image), if any.
    pub syntax: Option<String>,
    pub instructions: Vec<Instruction>,
}

pub const INSTRUCTIONS: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Frontends whose features this parser implements: the standard `docker/dockerfile` ones.
pub fn syntax_supported(s: &str) -> bool {
    let s = s.trim();
    let name = s.split(['@']).next().unwrap_or(s);
    let name = name.rsplit_once(':').map(|x| x.0).unwrap_or(name);
    let name = name
        .strip_prefix("docker.io/")
        .unwrap_or(name)
        .trim_end_matches("-upstream");
    matches!(name, "docker/dockerfile" | "docker/dockerfile-upstream")
}

/// Parse a whole Dockerfile.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut escape = '\\';
    let mut syntax = None;
    let mut i = 0;
    // Parser directives: `# key=value` lines at the very top.
    let mut seen = Vec::new();
    while i < lines.len() {
        let l = lines[i].trim_end_matches('\r');
        let Some(c) = l.trim_start().strip_prefix('#') else {
            break;
        };
        let Some((k, v)) = c.split_once('=') else {
            break;
        };
        let k = k.trim().to_ascii_lowercase();
        if k.is_empty() || k.contains(char::is_whitespace) {
            break;
        }
        let v = v.trim();
        match k.as_str() {
            "escape" | "syntax" | "check" => {}
            _ => break,
        }
        if seen.contains(&k) {
            return err(i + 1, format!("only one {k} parser directive can be used"));
        }
        seen.push(k.clone());
        match k.as_str() {
            "escape" => {
                escape = match v {
                    "\\" => '\\',
                    "`" => '`',
                    _ => return err(i + 1, format!("invalid escape token {v:?}: use \\ or `")),
                }
            }
            "syntax" => syntax = Some(v.to_string()),
            _ => {}
        }
        i += 1;
    }
    if let Some(s) = &syntax {
        if !syntax_supported(s) {
            return err(
                1,
                format!(
                    "# syntax={s}: berth builds with its own Dockerfile frontend and cannot \
                     run a custom frontend image (remove the directive, or use docker/dockerfile)"
                ),
            );
        }
    }
    let mut out = Vec::new();
    while i < lines.len() {
        let start = i;
        let first = lines[i].trim_end_matches('\r');
        i += 1;
        let t = first.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        // Join continuation lines.
        let mut logical = String::new();
        let mut cur = first.to_string();
        loop {
            let trimmed = cur.trim_end();
            if let Some(body) = trimmed.strip_suffix(escape) {
                logical.push_str(body);
                // Next physical line, skipping comments and empty lines inside a continuation.
                let mut next = None;
                while i < lines.len() {
                    let l = lines[i].trim_end_matches('\r');
                    i += 1;
                    let lt = l.trim_start();
                    if lt.starts_with('#') || lt.is_empty() {
                        continue;
                    }
                    next = Some(l.to_string());
                    break;
                }
                match next {
                    Some(n) => cur = n,
                    None => break,
                }
            } else {
                logical.push_str(&cur);
                break;
            }
        }
        let logical = logical.trim().to_string();
        let (kw, rest) = match logical.find(char::is_whitespace) {
            Some(p) => (&logical[..p], logical[p..].trim_start()),
            None => (logical.as_str(), ""),
        };
        let keyword = kw.to_ascii_uppercase();
        if !INSTRUCTIONS.contains(&keyword.as_str()) {
            return err(start + 1, format!("unknown instruction: {kw}"));
        }
        let (flags, args) = split_flags(rest, start + 1)?;
        let mut ins = Instruction {
            line: start + 1,
            keyword,
            flags,
            args: args.to_string(),
            heredocs: Vec::new(),
            original: logical.clone(),
        };
        if matches!(ins.keyword.as_str(), "RUN" | "COPY" | "ADD") && ins.json_args().is_none() {
            for (name, quoted, strip) in heredoc_markers(&ins.args) {
                let mut content = String::new();
                let mut done = false;
                while i < lines.len() {
                    let l = lines[i].trim_end_matches('\r');
                    i += 1;
                    let cmp = if strip { l.trim_start_matches('\t') } else { l };
                    if cmp == name {
                        done = true;
                        break;
                    }
                    content.push_str(cmp);
                    content.push('\n');
                }
                if !done {
                    return err(
                        start + 1,
                        format!("heredoc <<{name} is not terminated by a line {name}"),
                    );
                }
                ins.heredocs.push(Heredoc {
                    name,
                    content,
                    quoted,
                    strip_tabs: strip,
                });
            }
        }
        if ins.args.trim().is_empty()
            && ins.heredocs.is_empty()
            && !matches!(ins.keyword.as_str(), "HEALTHCHECK")
        {
            return err(
                ins.line,
                format!("{} requires at least one argument", ins.keyword),
            );
        }
        out.push(ins);
    }
    Ok(Dockerfile {
        escape,
        syntax,
        instructions: out,
    })
}

/// Leading `--name[=value]` words.
fn split_flags(rest: &str, line: usize) -> Result<(Flags, &str), ParseError> {
    let mut flags = Vec::new();
    let mut r = rest;
    while let Some(f) = r.strip_prefix("--") {
        let end = f.find(char::is_whitespace).unwrap_or(f.len());
        let word = &f[..end];
        if word.is_empty() {
            return err(line, "empty flag `--`");
        }
        match word.split_once('=') {
            Some((n, v)) => flags.push((n.to_ascii_lowercase(), Some(v.to_string()))),
            None => flags.push((word.to_ascii_lowercase(), None)),
        }
        r = f[end..].trim_start();
    }
    Ok((flags, r))
}

/// Heredoc markers (`<<EOF`, `<<-EOF`, `<<"EOF"`, `<<'EOF'`) outside quotes, in order.
pub fn heredoc_markers(args: &str) -> Vec<(String, bool, bool)> {
    let b: Vec<char> = args.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut quote: Option<char> = None;
    while i < b.len() {
        let c = b[i];
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if c == '\'' || c == '"' {
            quote = Some(c);
            i += 1;
            continue;
        }
        if c == '<' && i + 1 < b.len() && b[i + 1] == '<' && (i + 2 >= b.len() || b[i + 2] != '<') {
            let mut j = i + 2;
            let strip = j < b.len() && b[j] == '-';
            if strip {
                j += 1;
            }
            let mut quoted = false;
            let mut name = String::new();
            if j < b.len() && (b[j] == '"' || b[j] == '\'') {
                let q = b[j];
                quoted = true;
                j += 1;
                while j < b.len() && b[j] != q {
                    name.push(b[j]);
                    j += 1;
                }
                j += 1;
            } else {
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == '_' || b[j] == '.') {
                    name.push(b[j]);
                    j += 1;
                }
            }
            if !name.is_empty() {
                out.push((name, quoted, strip));
            }
            i = j;
            continue;
        }
        i += 1;
    }
    out
}

// ---- words and substitution ------------------------------------------------------------

/// The variables visible to an instruction (ARGs and ENVs), in Docker's precedence.
pub type Env = BTreeMap<String, String>;

/// Split on unquoted whitespace, keeping quotes and escapes in the words (Docker's parseWords).
pub fn split_words(s: &str, escape: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == escape && quote != Some('\'') {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
            continue;
        }
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
                cur.push(c);
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                cur.push(c);
            }
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            None => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Expand variables in one word and remove its quotes and escapes (Docker's ProcessWord).
pub fn process_word(word: &str, env: &Env, escape: char) -> Result<String, String> {
    let mut lx = Lexer {
        c: word.chars().collect(),
        i: 0,
        env,
        escape,
    };
    lx.word(None)
}

/// Expand a whole string, splitting into words first (EXPOSE, VOLUME, COPY sources…).
pub fn process_words(s: &str, env: &Env, escape: char) -> Result<Vec<String>, String> {
    split_words(s, escape)
        .iter()
        .map(|w| process_word(w, env, escape))
        .collect()
}

struct Lexer<'a> {
    c: Vec<char>,
    i: usize,
    env: &'a Env,
    escape: char,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.c.get(self.i).copied()
    }
    /// Read until `stop` (not consumed) or the end.
    fn word(&mut self, stop: Option<char>) -> Result<String, String> {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                break;
            }
            self.i += 1;
            if c == self.escape {
                match self.peek() {
                    Some(n) => {
                        self.i += 1;
                        out.push(n);
                    }
                    None => out.push(c),
                }
            } else if c == '\'' {
                while let Some(n) = self.peek() {
                    self.i += 1;
                    if n == '\'' {
                        break;
                    }
                    out.push(n);
                }
            } else if c == '"' {
                while let Some(n) = self.peek() {
                    self.i += 1;
                    if n == '"' {
                        break;
                    }
                    if n == self.escape {
                        match self.peek() {
                            Some(m @ ('"' | '$')) => {
                                self.i += 1;
                                out.push(m);
                            }
                            Some(m) if m == self.escape => {
                                self.i += 1;
                                out.push(m);
                            }
                            _ => out.push(n),
                        }
                    } else if n == '$' {
                        out.push_str(&self.dollar()?);
                    } else {
                        out.push(n);
                    }
                }
            } else if c == '$' {
                out.push_str(&self.dollar()?);
            } else {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// After a `$`.
    fn dollar(&mut self) -> Result<String, String> {
        match self.peek() {
            Some('{') => {
                self.i += 1;
                let name = self.name();
                if name.is_empty() {
                    return Err("bad substitution: missing variable name after ${".into());
                }
                let val = self.env.get(&name).cloned();
                match self.peek() {
                    Some('}') => {
                        self.i += 1;
                        Ok(val.unwrap_or_default())
                    }
                    Some(':') | Some('-') | Some('+') | Some('?') => {
                        let colon = self.peek() == Some(':');
                        if colon {
                            self.i += 1;
                        }
                        let op = self.peek().unwrap_or('}');
                        if !matches!(op, '-' | '+' | '?') {
                            return Err(format!("unsupported modifier ({op}) in substitution"));
                        }
                        self.i += 1;
                        let word = self.word(Some('}'))?;
                        if self.peek() != Some('}') {
                            return Err(format!("missing '}}' in ${{{name}…"));
                        }
                        self.i += 1;
                        let set = match &val {
                            Some(v) => !(colon && v.is_empty()),
                            None => false,
                        };
                        Ok(match op {
                            '-' => {
                                if set {
                                    val.unwrap_or_default()
                                } else {
                                    word
                                }
                            }
                            '+' => {
                                if set {
                                    word
                                } else {
                                    String::new()
                                }
                            }
                            _ => {
                                if set {
                                    val.unwrap_or_default()
                                } else if word.is_empty() {
                                    return Err(format!("{name}: is not allowed to be unset"));
                                } else {
                                    return Err(format!("{name}: {word}"));
                                }
                            }
                        })
                    }
                    _ => Err(format!("bad substitution in ${{{name}")),
                }
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let name = self.name();
                Ok(self.env.get(&name).cloned().unwrap_or_default())
            }
            _ => Ok("$".into()),
        }
    }

    fn name(&mut self) -> String {
        let mut n = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                n.push(c);
                self.i += 1;
            } else {
                break;
            }
        }
        n
    }
}

/// `KEY=VALUE …` pairs (ENV, LABEL, ARG with defaults), or the legacy `KEY value` form when
/// `legacy` is allowed. Values are expanded with `env`.
pub fn key_values(
    args: &str,
    env: &Env,
    escape: char,
    legacy: bool,
) -> Result<Vec<(String, String)>, String> {
    let words = split_words(args, escape);
    if words.is_empty() {
        return Err("needs at least one argument".into());
    }
    if !words[0].contains('=') {
        if !legacy {
            return Err(format!("{} must be of the form KEY=VALUE", words[0]));
        }
        // Legacy `ENV key value with spaces`: the rest of the line is the value.
        let key = &words[0];
        let rest = args.trim_start()[key.len()..].trim();
        if rest.is_empty() {
            return Err(format!("{key} needs a value"));
        }
        return Ok(vec![(key.clone(), process_word(rest, env, escape)?)]);
    }
    let mut out = Vec::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!("{w} must be of the form KEY=VALUE"));
        };
        let k = process_word(k, env, escape)?;
        if k.is_empty() {
            return Err(format!("{w}: empty key"));
        }
        out.push((k, process_word(v, env, escape)?));
    }
    Ok(out)
}

/// Docker's predefined build args, usable without an ARG line and left out of the image.
pub const PREDEFINED_ARGS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn env(kv: &[(&str, &str)]) -> Env {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn instructions_flags_and_continuations() {
        let d = parse(
            "# comment\nFROM busybox AS build\nRUN echo a \\\n  # inner comment\n\n  && echo b\n\
             copy --from=build --chown=1:2 a b /c/\n",
        )
        .unwrap();
        assert_eq!(d.instructions.len(), 3);
        let r = &d.instructions[1];
        assert_eq!(r.keyword, "RUN");
        assert_eq!(r.line, 3);
        assert_eq!(r.args, "echo a   && echo b");
        let c = &d.instructions[2];
        assert_eq!(c.keyword, "COPY");
        assert_eq!(c.line, 7);
        assert_eq!(c.flag("from"), Some("build"));
        assert_eq!(c.flag("chown"), Some("1:2"));
        assert_eq!(c.args, "a b /c/");
    }

    #[test]
    fn escape_directive_backtick() {
        let d = parse("# escape=`\nFROM x\nRUN dir c:\\ `\n  /b\n").unwrap();
        assert_eq!(d.escape, '`');
        assert_eq!(d.instructions[1].args, "dir c:\\   /b");
        // Not a directive once an instruction was seen.
        let d = parse("FROM x\n# escape=`\nRUN a \\\n b\n").unwrap();
        assert_eq!(d.escape, '\\');
        assert_eq!(d.instructions[1].args, "a  b");
    }

    #[test]
    fn syntax_directive() {
        assert!(parse("# syntax=docker/dockerfile:1.7\nFROM x\n").is_ok());
        assert!(parse("# syntax=docker.io/docker/dockerfile:1@sha256:abc\nFROM x\n").is_ok());
        let e = parse("# syntax=example.com/my/frontend:1\nFROM x\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.msg.contains("custom frontend"), "{e}");
        let e = parse("# escape=\\\n# escape=`\nFROM x").unwrap_err();
        assert!(e.msg.contains("only one escape"));
    }

    #[test]
    fn unknown_instruction_names_line() {
        let e = parse("FROM x\n\nFRUM y\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.msg.contains("unknown instruction: FRUM"));
        let e = parse("FROM x\nRUN\n").unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn heredocs() {
        let d = parse(
            "FROM x\nRUN <<EOF\necho hi\necho there\nEOF\nCOPY <<-'A' <<B /dst/\n\tone $X\nA\ntwo\nB\nRUN echo after\n",
        )
        .unwrap();
        let r = &d.instructions[1];
        assert_eq!(r.heredocs.len(), 1);
        assert_eq!(r.heredocs[0].name, "EOF");
        assert_eq!(r.heredocs[0].content, "echo hi\necho there\n");
        let c = &d.instructions[2];
        assert_eq!(c.heredocs.len(), 2);
        assert_eq!(c.heredocs[0].content, "one $X\n");
        assert!(c.heredocs[0].quoted && c.heredocs[0].strip_tabs);
        assert_eq!(c.heredocs[1].name, "B");
        assert_eq!(d.instructions[3].args, "echo after");
        let e = parse("FROM x\nRUN <<EOF\necho\n").unwrap_err();
        assert!(e.msg.contains("not terminated"));
        // `<<` inside quotes is not a heredoc.
        assert!(heredoc_markers("echo '<<EOF'").is_empty());
    }

    #[test]
    fn exec_and_shell_forms() {
        let d = parse("FROM x\nCMD [\"a\", \"b c\"]\nCMD a b\nCMD [bad json\n").unwrap();
        assert_eq!(
            d.instructions[1].cmd_form(),
            CmdForm::Exec(vec!["a".into(), "b c".into()])
        );
        assert_eq!(d.instructions[2].cmd_form(), CmdForm::Shell("a b".into()));
        assert_eq!(
            d.instructions[3].cmd_form(),
            CmdForm::Shell("[bad json".into())
        );
    }

    #[test]
    fn substitution_rules() {
        // From the Dockerfile reference's "Environment replacement".
        let e = env(&[("a", "x"), ("empty", "")]);
        let p = |s: &str| process_word(s, &e, '\\').unwrap();
        assert_eq!(p("$a"), "x");
        assert_eq!(p("${a}b"), "xb");
        assert_eq!(p("${nope:-word}"), "word");
        assert_eq!(p("${empty:-word}"), "word");
        assert_eq!(p("${empty-word}"), "");
        assert_eq!(p("${nope-word}"), "word");
        assert_eq!(p("${a:+word}"), "word");
        assert_eq!(p("${empty:+word}"), "");
        assert_eq!(p("${empty+word}"), "word");
        assert_eq!(p("${nope:+word}"), "");
        assert_eq!(p("${nope:-$a}"), "x");
        assert_eq!(p("\\$a"), "$a");
        assert_eq!(p("'$a'"), "$a");
        assert_eq!(p("\"$a y\""), "x y");
        assert_eq!(p("a\\ b"), "a b");
        assert_eq!(p("$"), "$");
        assert_eq!(p("$1"), "$1");
        assert!(process_word("${nope:?must be set}", &e, '\\')
            .unwrap_err()
            .contains("must be set"));
        assert!(process_word("${a", &e, '\\').is_err());
    }

    #[test]
    fn env_forms() {
        let e = env(&[("base", "/opt")]);
        let kv = key_values("A=1 B=\"two words\" C=$base/x D=", &e, '\\', true).unwrap();
        assert_eq!(
            kv,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "/opt/x".into()),
                ("D".into(), "".into())
            ]
        );
        let kv = key_values("MY_NAME John Doe", &e, '\\', true).unwrap();
        assert_eq!(kv, vec![("MY_NAME".into(), "John Doe".into())]);
        assert!(key_values("A 1", &e, '\\', false).is_err());
        assert_eq!(
            split_words("a \"b c\" 'd e' f\\ g", '\\'),
            vec!["a", "\"b c\"", "'d e'", "f\\ g"]
        );
    }
}
