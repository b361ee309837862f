//! Fuzz the loader: arbitrary bytes as a compose file (via `-f -`), as a `.env` file and as
//! an interpolation template. Any input must give Ok or a LoadError, never a panic, and a
//! loaded project must render and re-load (config of config).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
mod cli {
    #[derive(Debug, Clone, Default)]
    pub struct ProjectOpts {
        pub files: Vec<std::path::PathBuf>,
        pub project_name: Option<String>,
        pub project_directory: Option<std::path::PathBuf>,
        pub env_files: Vec<std::path::PathBuf>,
        pub profiles: Vec<String>,
    }
}

#[allow(dead_code, unused_imports)]
#[path = "../../src/compose/mod.rs"]
mod compose;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env: std::collections::HashMap<String, String> = [
        ("FOO".to_string(), "bar".to_string()),
        ("HOME".to_string(), "/root".to_string()),
    ]
    .into();
    let lookup = |k: &str| env.get(k).cloned();
    let mut unset = Vec::new();
    let _ = compose::interp::substitute(text, &lookup, &mut unset);
    let _ = compose::dotenv::parse(text, &lookup);
    let opts = compose::LoadOptions {
        files: vec!["-".into()],
        project_name: Some("fuzz".into()),
        interpolate: true,
        // A directory that does not exist: nothing outside the input is ever read.
        working_dir: "/nonexistent-berth-fuzz".into(),
        environment: env.clone(),
        resolve_env_files: false,
        stdin: Some(text.to_string()),
        ..Default::default()
    };
    if let Ok(p) = compose::load(&opts) {
        let _ = compose::graph::ServiceGraph::new(&p);
        for s in p.services.values() {
            let _ = compose::hash::service_hash(s);
        }
        if let Ok(out) = compose::render::render(&p, false, true) {
            let mut o2 = opts.clone();
            o2.stdin = Some(out.clone());
            let p2 = compose::load(&o2)
                .unwrap_or_else(|e| panic!("config output does not load: {e}\n{out}"));
            let out2 = compose::render::render(&p2, false, true).unwrap();
            assert_eq!(out, out2, "config of config differs");
        }
    }
});
