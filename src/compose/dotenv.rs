//! `.env` / `env_file` parsing (compose-go `dotenv`): comments, `export`, single/double quotes
//! (multi-line), escapes in double quotes, inline ` #` comments, `${VAR}` expansion (not in
//! single quotes), bare `KEY` inheriting from the environment, digit-leading keys dropped.

use indexmap::IndexMap;

use super::interp;

/// Parse `src`. `lookup` resolves variables (the process environment); values defined
/// earlier in the file are used when `lookup` has none. A bare `KEY` takes its value from
/// `lookup` and is left out when unset.
pub fn parse(
    src: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<IndexMap<String, Option<String>>, String> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let src = src.replace("\r\n", "\n");
    let mut out: IndexMap<String, Option<String>> = IndexMap::new();
    let chars: Vec<char> = src.chars().collect();
    let mut i = 0;
    let mut line_no = 1;
    while i < chars.len() {
        // One logical line starting at i.
        let line_start_no = line_no;
        // Skip leading whitespace.
        while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        if chars[i] == '\n' {
            i += 1;
            line_no += 1;
            continue;
        }
        if chars[i] == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        // Key: up to '=' or end of line.
        let ks = i;
        while i < chars.len() && chars[i] != '=' && chars[i] != '\n' {
            i += 1;
        }
        let raw_key: String = chars[ks..i].iter().collect();
        let mut key = raw_key.trim().to_string();
        if let Some(k) = key.strip_prefix("export ") {
            key = k.trim().to_string();
        }
        if i >= chars.len() || chars[i] == '\n' {
            // Bare KEY (possibly a comment after it).
            let k = key.split(" #").next().unwrap_or("").trim().to_string();
            if k.contains(' ') || k.contains('\t') {
                return Err(format!("line {line_start_no}: key cannot contain a space"));
            }
            if !k.is_empty() && !k.starts_with(|c: char| c.is_ascii_digit()) {
                if let Some(v) = lookup(&k) {
                    out.insert(k, Some(v));
                }
            }
            continue;
        }
        i += 1; // '='
        if key.is_empty() {
            return Err(format!("line {line_start_no}: empty key"));
        }
        if key.contains(' ') || key.contains('\t') {
            return Err(format!("line {line_start_no}: key cannot contain a space"));
        }
        while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
            i += 1;
        }
        let value = match chars.get(i) {
            Some('\'') => {
                i += 1;
                let mut v = String::new();
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(format!("line {line_start_no}: unterminated quoted value"))
                        }
                        Some('\\') if chars.get(i + 1) == Some(&'\'') => {
                            v.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(c) => {
                            if *c == '\n' {
                                line_no += 1;
                            }
                            v.push(*c);
                            i += 1;
                        }
                    }
                }
                skip_rest(&chars, &mut i);
                v
            }
            Some('"') => {
                i += 1;
                let mut v = String::new();
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(format!("line {line_start_no}: unterminated quoted value"))
                        }
                        Some('\\') => {
                            let n = chars.get(i + 1).copied();
                            match n {
                                Some('n') => v.push('\n'),
                                Some('r') => v.push('\r'),
                                Some('t') => v.push('\t'),
                                Some('"') => v.push('"'),
                                Some('\\') => v.push('\\'),
                                Some('$') => v.push_str("$$"),
                                Some(c) => {
                                    v.push('\\');
                                    v.push(c);
                                }
                                None => v.push('\\'),
                            }
                            i += 2;
                        }
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some(c) => {
                            if *c == '\n' {
                                line_no += 1;
                            }
                            v.push(*c);
                            i += 1;
                        }
                    }
                }
                skip_rest(&chars, &mut i);
                expand(&v, lookup, &out, line_start_no)?
            }
            _ => {
                let vs = i;
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                let raw: String = chars[vs..i].iter().collect();
                // Inline comment: whitespace then '#'.
                let mut cut = raw.len();
                let b = raw.as_bytes();
                for (pos, ch) in raw.char_indices() {
                    if ch == '#' && pos > 0 && (b[pos - 1] == b' ' || b[pos - 1] == b'\t') {
                        cut = pos;
                        break;
                    }
                }
                let v = raw[..cut].trim().to_string();
                expand(&v, lookup, &out, line_start_no)?
            }
        };
        if key.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        out.insert(key, Some(value));
    }
    Ok(out)
}

fn skip_rest(chars: &[char], i: &mut usize) {
    while *i < chars.len() && chars[*i] != '\n' {
        *i += 1;
    }
}

fn expand(
    v: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    so_far: &IndexMap<String, Option<String>>,
    line: usize,
) -> Result<String, String> {
    if !v.contains('$') {
        return Ok(v.to_string());
    }
    let l = |k: &str| lookup(k).or_else(|| so_far.get(k).cloned().flatten());
    let mut unset = Vec::new();
    interp::substitute(v, &l, &mut unset).map_err(|e| format!("line {line}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const DIR: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/compose-corpus/compose-go/dotenv/fixtures"
    );

    #[test]
    fn dotenv_expected_cases() {
        let exp: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/EXPECTED.json")).unwrap())
                .unwrap();
        let mut ran = 0;
        for case in exp["cases"].as_array().unwrap() {
            let file = case["file"].as_str().unwrap();
            if file == "custom.format" {
                continue; // needs a format plug-in
            }
            let env: HashMap<String, String> = case["env"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            let src = std::fs::read_to_string(format!("{DIR}/{file}")).unwrap();
            let lookup = |k: &str| env.get(k).cloned();
            let got = parse(&src, &lookup);
            ran += 1;
            if let Some(err) = case["error"].as_str() {
                let e = got.expect_err(file);
                assert!(e.contains(err), "{file}: {e}");
                continue;
            }
            let got = got.unwrap_or_else(|e| panic!("{file}: {e}"));
            if let Some(absent) = case["absent"].as_array() {
                for a in absent {
                    assert!(!got.contains_key(a.as_str().unwrap()), "{file}");
                }
            }
            if let Some(want) = case["expected"].as_object() {
                for (k, v) in want {
                    assert_eq!(
                        got.get(k).cloned().flatten().as_deref(),
                        Some(v.as_str().unwrap()),
                        "{file}: {k}"
                    );
                }
                if case["subset"].as_bool() != Some(true) {
                    assert_eq!(got.len(), want.len(), "{file}: {got:?}");
                }
            }
        }
        assert!(ran >= 14);
    }

    #[test]
    fn corpus_env_edge_cases() {
        let none = |_: &str| None;
        let got = parse("A=1 # comment\nB=\nC=x#y", &none).unwrap();
        assert_eq!(got["A"].as_deref(), Some("1"));
        assert_eq!(got["B"].as_deref(), Some(""));
        assert_eq!(got["C"].as_deref(), Some("x#y"));
        let got = parse("export X=\"a\\nb\"\n", &none).unwrap();
        assert_eq!(got["X"].as_deref(), Some("a\nb"));
    }
}
