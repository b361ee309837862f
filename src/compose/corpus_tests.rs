//! The conformance corpus (../shared/compose-corpus): which files load, which fail and how,
//! `config` idempotence, and the full-example golden.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::model::LoadOptions;

pub const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/compose-corpus");

/// The corpus directory, canonical (paths in loaded projects are clean absolute paths).
pub fn corpus() -> PathBuf {
    Path::new(CORPUS)
        .canonicalize()
        .expect("../shared/compose-corpus present")
}

pub fn opts_for(file: &Path, env: &[(&str, &str)]) -> LoadOptions {
    let mut environment: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    environment
        .entry("HOME".into())
        .or_insert_with(|| "/home/tester".into());
    LoadOptions {
        files: vec![file.to_path_buf()],
        interpolate: true,
        working_dir: file.parent().unwrap().to_path_buf(),
        environment,
        resolve_env_files: true,
        ..Default::default()
    }
}

pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml") | Some("yml")
            ) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn render(p: &super::Project) -> String {
    super::render::render(p, false, true).unwrap()
}

/// Load, render, load the rendering, render again: identical.
fn idempotent(file: &Path, env: &[(&str, &str)]) -> Result<(), String> {
    let p = super::load(&opts_for(file, env)).map_err(|e| e.to_string())?;
    let out1 = render(&p);
    let mut o = opts_for(file, env);
    o.files = vec![PathBuf::from("-")];
    o.stdin = Some(out1.clone());
    let p2 = super::load(&o).map_err(|e| format!("reloading config output: {e}\n{out1}"))?;
    let out2 = render(&p2);
    if out1 != out2 {
        return Err(format!(
            "not idempotent:\n--- first\n{out1}\n--- second\n{out2}"
        ));
    }
    Ok(())
}

#[test]
fn awesome_compose_all_load_and_are_idempotent() {
    let dir = corpus().join("awesome-compose");
    let files = yaml_files(&dir);
    assert!(files.len() >= 39, "{}", files.len());
    let mut failures = Vec::new();
    for f in &files {
        if let Err(e) = idempotent(f, &[]) {
            failures.push(format!("{}: {e}", f.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn docker_compose_e2e_files_load() {
    let dir = corpus().join("docker-compose-e2e");
    let mut failures = Vec::new();
    let mut n = 0;
    for f in yaml_files(&dir) {
        let rel = f.strip_prefix(&dir).unwrap().display().to_string();
        // Files docker compose rejects too (checked by tests/loader.rs's differential test).
        let expected_error = match rel.as_str() {
            "wrong-composefile/compose.yaml" => Some("additional property \"wrongField\""),
            "logs-test/cat.yaml" => Some("empty section between colons"),
            "publish/oci/compose-override.yaml" => Some("neither an image nor a build context"),
            "build-test/platforms/compose-service-platform-not-in-build-platforms.yaml" => {
                Some("MUST include service.platform")
            }
            _ => None,
        };
        if let Some(want) = expected_error {
            let e = super::load(&opts_for(&f, &[])).unwrap_err().to_string();
            assert!(e.contains(want), "{rel}: {e}");
            continue;
        }
        n += 1;
        let mut o = opts_for(&f, &[]);
        // env_file/: serviceB's missing env file must not break selecting serviceA.
        if rel.starts_with("env_file/") {
            o.services = vec!["serviceA".into()];
        }
        if let Err(e) = super::load(&o) {
            failures.push(format!("{rel}: {e}"));
        }
    }
    assert!(n >= 50, "{n}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
