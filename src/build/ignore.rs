//! `.dockerignore` with Docker's rules (moby/patternmatcher): one pattern a line, `#` comments,
//! patterns cleaned like Go's `filepath.Clean` with a leading `/` dropped, `!` re-includes, the
//! last matching pattern wins, a pattern that matches a directory matches everything below it,
//! `*` and `?` stay within one path segment, `**` spans any number of segments, `[...]` classes
//! and `\` escapes as in `filepath.Match`. The same matcher (without `**`) serves COPY globs.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// `**` at the end: anything.
    Any,
    /// `**/` (or `**` before more pattern): any number of whole segments, or none.
    Dirs,
    Star,
    One,
    Class(Vec<(char, char)>, bool),
    Lit(char),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    toks: Vec<Tok>,
    pub exclusion: bool,
    pub text: String,
}

/// Go's `filepath.Clean` on a slash path (without making it absolute).
pub fn clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            c => out.push(c),
        }
    }
    let s = out.join("/");
    match (rooted, s.is_empty()) {
        (true, _) => format!("/{s}"),
        (false, true) => ".".into(),
        (false, false) => s,
    }
}

fn compile(p: &str, doublestar: bool) -> Result<Vec<Tok>, String> {
    let c: Vec<char> = p.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '*' => {
                if doublestar && c.get(i + 1) == Some(&'*') {
                    i += 2;
                    if c.get(i) == Some(&'/') {
                        i += 1;
                    }
                    toks.push(if i >= c.len() { Tok::Any } else { Tok::Dirs });
                    continue;
                }
                toks.push(Tok::Star);
            }
            '?' => toks.push(Tok::One),
            '\\' => {
                i += 1;
                match c.get(i) {
                    Some(&x) => toks.push(Tok::Lit(x)),
                    None => return Err(format!("syntax error in pattern {p:?}")),
                }
            }
            '[' => {
                i += 1;
                let neg = matches!(c.get(i), Some('^') | Some('!'));
                if neg {
                    i += 1;
                }
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let Some(&x) = c.get(i) else {
                        return Err(format!("syntax error in pattern {p:?}: unclosed ["));
                    };
                    if x == ']' && !first {
                        break;
                    }
                    first = false;
                    let lo = if x == '\\' {
                        i += 1;
                        *c.get(i)
                            .ok_or_else(|| format!("syntax error in pattern {p:?}"))?
                    } else {
                        x
                    };
                    i += 1;
                    let hi = if c.get(i) == Some(&'-') && c.get(i + 1).is_some_and(|x| *x != ']') {
                        i += 1;
                        let h = if c[i] == '\\' {
                            i += 1;
                            *c.get(i)
                                .ok_or_else(|| format!("syntax error in pattern {p:?}"))?
                        } else {
                            c[i]
                        };
                        i += 1;
                        h
                    } else {
                        lo
                    };
                    ranges.push((lo, hi));
                }
                toks.push(Tok::Class(ranges, neg));
            }
            x => toks.push(Tok::Lit(x)),
        }
        i += 1;
    }
    Ok(toks)
}

fn matches(t: &[Tok], s: &[char]) -> bool {
    let Some((first, rest)) = t.split_first() else {
        return s.is_empty();
    };
    match first {
        Tok::Any => true,
        Tok::Dirs => {
            if matches(rest, s) {
                return true;
            }
            // Consume up to and including each '/'.
            (0..s.len()).any(|i| s[i] == '/' && matches(rest, &s[i + 1..]))
        }
        Tok::Star => {
            for i in 0..=s.len() {
                if matches(rest, &s[i..]) {
                    return true;
                }
                if i < s.len() && s[i] == '/' {
                    break;
                }
            }
            false
        }
        Tok::One => !s.is_empty() && s[0] != '/' && matches(rest, &s[1..]),
        Tok::Class(r, neg) => {
            !s.is_empty()
                && s[0] != '/'
                && (r.iter().any(|(lo, hi)| *lo <= s[0] && s[0] <= *hi) != *neg)
                && matches(rest, &s[1..])
        }
        Tok::Lit(c) => !s.is_empty() && s[0] == *c && matches(rest, &s[1..]),
    }
}

/// `filepath.Match` (no `**`): for COPY/ADD source globs.
pub fn glob_match(pattern: &str, path: &str) -> Result<bool, String> {
    let t = compile(pattern, false)?;
    Ok(matches(&t, &path.chars().collect::<Vec<_>>()))
}

pub fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl Pattern {
    pub fn new(line: &str) -> Result<Option<Pattern>, String> {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            return Ok(None);
        }
        let (exclusion, p) = match l.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, l),
        };
        let mut p = clean(p);
        if let Some(rest) = p.strip_prefix('/') {
            p = if rest.is_empty() {
                ".".into()
            } else {
                rest.into()
            };
        }
        Ok(Some(Pattern {
            toks: compile(&p, true)?,
            exclusion,
            text: l.to_string(),
        }))
    }
    fn is_match(&self, path: &str) -> bool {
        matches(&self.toks, &path.chars().collect::<Vec<_>>())
    }
}

/// The patterns of a `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    pub patterns: Vec<Pattern>,
}

impl Ignore {
    pub fn parse(text: &str) -> Result<Ignore, String> {
        let mut patterns = Vec::new();
        for (n, l) in text.lines().enumerate() {
            if let Some(p) = Pattern::new(l).map_err(|e| format!("line {}: {e}", n + 1))? {
                patterns.push(p);
            }
        }
        Ok(Ignore { patterns })
    }

    /// Is `path` (relative to the context, `/`-separated) excluded from the context?
    pub fn excluded(&self, path: &str) -> bool {
        let path = clean(path);
        let dirs: Vec<&str> = path.split('/').collect();
        let mut matched = false;
        for p in &self.patterns {
            if p.exclusion != matched {
                continue;
            }
            let mut m = p.is_match(&path);
            if !m && dirs.len() > 1 {
                for i in 1..dirs.len() {
                    if p.is_match(&dirs[..i].join("/")) {
                        m = true;
                        break;
                    }
                }
            }
            if m {
                matched = !p.exclusion;
            }
        }
        matched
    }

    /// Do any patterns re-include (`!`)? Then excluded directories must still be walked.
    pub fn has_exclusions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ig(s: &str) -> Ignore {
        Ignore::parse(s).unwrap()
    }

    #[test]
    fn clean_like_go() {
        assert_eq!(clean("a/b/../c/./d/"), "a/c/d");
        assert_eq!(clean("/a/.."), "/");
        assert_eq!(clean("./"), ".");
        assert_eq!(clean("../x"), "../x");
        assert_eq!(clean("//a//b"), "/a/b");
    }

    #[test]
    fn reference_examples() {
        // The examples of the Dockerfile reference's .dockerignore section.
        let i = ig("# comment\n*/temp*\n*/*/temp*\ntemp?\n");
        assert!(i.excluded("somedir/temporary.txt"));
        assert!(i.excluded("somedir/temp"));
        assert!(i.excluded("somedir/subdir/temporary.txt"));
        assert!(i.excluded("tempa"));
        assert!(i.excluded("tempb"));
        assert!(!i.excluded("temporary.txt"));
        assert!(!i.excluded("a/b/c/temp"));
        let i = ig("*.md\n!README.md\n");
        assert!(i.excluded("CHANGES.md"));
        assert!(!i.excluded("README.md"));
        let i = ig("*.md\n!README*.md\nREADME-secret.md\n");
        assert!(i.excluded("README-secret.md"));
        assert!(!i.excluded("README-public.md"));
        let i = ig("*.md\nREADME-secret.md\n!README*.md\n");
        assert!(!i.excluded("README-secret.md"));
    }

    #[test]
    fn doublestar_and_dirs() {
        let i = ig("**/*.go\n");
        assert!(i.excluded("main.go"));
        assert!(i.excluded("a/b/c.go"));
        assert!(!i.excluded("a/b/c.rs"));
        let i = ig("node_modules\n");
        assert!(i.excluded("node_modules"));
        assert!(i.excluded("node_modules/x/y.js"));
        assert!(!i.excluded("src/node_modules"));
        let i = ig("**/node_modules\n");
        assert!(i.excluded("src/node_modules/a"));
        let i = ig("docs/**\n");
        assert!(i.excluded("docs/a/b"));
        assert!(!i.excluded("src/docs"));
        let i = ig("a/**/z\n");
        assert!(i.excluded("a/z"));
        assert!(i.excluded("a/b/c/z"));
    }

    #[test]
    fn leading_slash_dots_and_classes() {
        let i = ig("/build/\n./tmp/../cache\n[ab]?.txt\n\\*lit\n");
        assert!(i.excluded("build/out.o"));
        assert!(i.excluded("cache"));
        assert!(!i.excluded("tmp"));
        assert!(i.excluded("ax.txt"));
        assert!(!i.excluded("cx.txt"));
        assert!(i.excluded("*lit"));
        assert!(!i.excluded("xlit"));
        let i = ig("[!a]*\n");
        assert!(i.excluded("b"));
        assert!(!i.excluded("a"));
        assert!(Ignore::parse("[abc\n").is_err());
    }

    #[test]
    fn exclusion_inside_excluded_dir() {
        let i = ig("dir\n!dir/keep.txt\n");
        assert!(i.excluded("dir/other.txt"));
        assert!(!i.excluded("dir/keep.txt"));
        assert!(i.has_exclusions());
    }

    #[test]
    fn copy_globs() {
        assert!(glob_match("*.txt", "a.txt").unwrap());
        assert!(!glob_match("*.txt", "d/a.txt").unwrap());
        assert!(glob_match("d/*.txt", "d/a.txt").unwrap());
        assert!(glob_match("a?c", "abc").unwrap());
        assert!(has_glob("src/*.rs"));
        assert!(!has_glob("src/main.rs"));
    }
}
