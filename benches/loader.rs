//! Loader benchmark: a generated 500-service project (ports, volumes, environment, depends_on
//! chains, healthchecks, networks, an override file and a .env), loaded end to end
//! (discovery → interpolation → merge → normalisation → validation), plus the graph and the
//! config hashes. Run with `cargo bench --bench loader`; prints the median and p90.

use std::path::PathBuf;
use std::time::Instant;

/// The loader's only outside reference: the global options type of the CLI.
#[allow(dead_code)]
mod cli {
    #[derive(Debug, Clone, Default)]
    pub struct ProjectOpts {
        pub files: Vec<std::path::PathBuf>,
        pub project_name: Option<String>,
        pub project_directory: Option<std::path::PathBuf>,
        pub env_files: Vec<std::path::PathBuf>,
        pub profiles: Vec<String>,
        pub all_resources: bool,
    }
}

#[allow(dead_code, unused_imports)]
#[path = "../src/compose/mod.rs"]
mod compose;

fn generate(n: usize) -> (String, String) {
    let mut y = String::from(
        "x-common: &common\n  restart: unless-stopped\n  labels: {team: core}\nservices:\n",
    );
    for i in 0..n {
        y.push_str(&format!(
            "  svc{i}:\n    <<: *common\n    image: \"registry.local/app:${{TAG:-latest}}\"\n    command: [\"/bin/app\", \"--id\", \"{i}\"]\n    ports: [\"{}:80\", \"127.0.0.1:{}:9000/udp\"]\n    volumes: [\"./data/{i}:/data\", \"vol{}:/cache:ro\", {{type: tmpfs, target: /tmp, tmpfs: {{size: 64m}}}}]\n    environment:\n      ID: \"{i}\"\n      MODE: ${{MODE:-prod}}\n      PEERS: svc{}\n    healthcheck: {{test: \"curl -f http://localhost/health\", interval: 30s, timeout: 5s, retries: 3}}\n    networks: {{front: {{aliases: [s{i}]}}, back: null}}\n    deploy: {{resources: {{limits: {{memory: 256m, cpus: '0.5'}}}}, update_config: {{order: start-first}}}}\n",
            20000 + i,
            40000 + i,
            i % 10,
            (i + 1) % n
        ));
        if i > 0 {
            y.push_str(&format!(
                "    depends_on:\n      svc{}: {{condition: service_healthy}}\n",
                i / 2
            ));
        }
    }
    y.push_str("networks: {front: {}, back: {internal: true}}\nvolumes:\n");
    for v in 0..10 {
        y.push_str(&format!("  vol{v}: {{}}\n"));
    }
    let mut o = String::from("services:\n");
    for i in (0..n).step_by(5) {
        o.push_str(&format!(
            "  svc{i}:\n    environment: {{OVERRIDDEN: \"yes\"}}\n"
        ));
    }
    (y, o)
}

fn main() {
    let n = 500;
    let dir = tempfile::tempdir().expect("tempdir");
    let (main, ov) = generate(n);
    std::fs::write(dir.path().join("compose.yaml"), &main).unwrap();
    std::fs::write(dir.path().join("compose.override.yaml"), &ov).unwrap();
    std::fs::write(dir.path().join(".env"), "TAG=1.2.3\nMODE=bench\n").unwrap();
    let opts = compose::LoadOptions {
        interpolate: true,
        working_dir: PathBuf::from(dir.path()),
        environment: [("HOME".to_string(), "/root".to_string())].into(),
        resolve_env_files: true,
        ..Default::default()
    };
    // Warm up, check the result.
    let p = compose::load(&opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.services.len(), n);
    let levels = compose::graph::ServiceGraph::new(&p)
        .unwrap()
        .start_levels()
        .len();
    let runs = 30;
    let mut load_times = Vec::new();
    let mut all_times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let p = compose::load(&opts).unwrap();
        let tl = t.elapsed();
        let g = compose::graph::ServiceGraph::new(&p).unwrap();
        let _ = g.start_levels();
        for s in p.services.values() {
            let _ = compose::hash::service_hash(s);
        }
        all_times.push(t.elapsed());
        load_times.push(tl);
    }
    load_times.sort();
    all_times.sort();
    let pct = |v: &[std::time::Duration], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    println!(
        "loader: {n} services ({} KiB of YAML + override + .env), {levels} start levels, {runs} runs",
        main.len() / 1024
    );
    println!(
        "  load:                 median {:>8.2?}  p90 {:>8.2?}",
        pct(&load_times, 0.5),
        pct(&load_times, 0.9)
    );
    println!(
        "  load + graph + hashes: median {:>8.2?}  p90 {:>8.2?}",
        pct(&all_times, 0.5),
        pct(&all_times, 0.9)
    );
}
