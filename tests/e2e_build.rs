//! `berth build` and `up` with `build:`: real images built offline from the busybox test image,
//! every instruction, multi-stage, .dockerignore, build args, secrets, the cache (RUNs counted),
//! and a built image running under `up`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn write(dir: &Path, rel: &str, content: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// `berth build --progress plain`, asserting success; returns stderr.
fn build(b: &Berth, file: &Path, extra: &[&str]) -> String {
    let mut args = vec!["build", "--progress", "plain"];
    args.extend_from_slice(extra);
    let out = b.cmd().arg("-f").arg(file).args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "berth build failed:\n{err}");
    err
}

/// RUN steps executed in a plain build log (started and not reported CACHED).
fn runs(log: &str) -> usize {
    let mut started = BTreeSet::new();
    let mut cached = BTreeSet::new();
    for l in log.lines() {
        let Some(rest) = l.strip_prefix('#') else {
            continue;
        };
        let (id, text) = rest.split_once(' ').unwrap_or((rest, ""));
        if text == "CACHED" {
            cached.insert(id.to_string());
        } else if text.starts_with('[') && text.contains("] RUN ") {
            started.insert(id.to_string());
        }
    }
    started.difference(&cached).count()
}

/// The image config (JSON) of `name` (`:latest` unless tagged) in the test's store.
fn image_config(b: &Berth, name: &str) -> serde_json::Value {
    let images = b.root.path().join("data/images");
    let db: serde_json::Value =
        serde_json::from_slice(&std::fs::read(images.join("images.json")).unwrap()).unwrap();
    let suffix = if name.contains(':') {
        format!("/{name}")
    } else {
        format!("/{name}:latest")
    };
    let rec = db["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["repo_tags"].as_array().unwrap().iter().any(|t| {
                let t = t.as_str().unwrap();
                t.ends_with(&suffix) || t == &suffix[1..]
            })
        })
        .unwrap_or_else(|| panic!("no image {name} in {db:#}"));
    let id = rec["id"].as_str().unwrap().trim_start_matches("sha256:");
    serde_json::from_slice(&std::fs::read(images.join("blobs/sha256").join(id)).unwrap()).unwrap()
}

/// The unpacked directories of an image's layers, lowest first.
fn layer_dirs(b: &Berth, cfg: &serde_json::Value) -> Vec<PathBuf> {
    cfg["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            b.root
                .path()
                .join("data/images/layers")
                .join(d.as_str().unwrap().trim_start_matches("sha256:"))
        })
        .collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.clone());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(files_under(&p));
            }
        }
    }
    out
}

const EVERY_INSTRUCTION: &str = r#"# syntax=docker/dockerfile:1
ARG BASE=berth-test/busybox:1
FROM ${BASE} AS base
LABEL org.example.stage="base" two=words\ here
ARG FLAVOUR=plain
ENV APP_HOME=/srv/app \
    MODE=${FLAVOUR:-none}
WORKDIR $APP_HOME
RUN --mount=type=cache,target=/cache echo run >> /cache/count && \
    echo "mode=$MODE flavour=$FLAVOUR" > build-info.txt && rm /www/index.html
COPY --chown=app:app --chmod=640 *.conf conf/
COPY src/ src/
ADD bundle.tar /opt/bundle/
RUN <<EOF
set -e
echo heredoc-ran > /srv/app/heredoc.txt
ls /srv/app/src > /srv/app/src-list.txt
EOF
COPY <<-NOTE /srv/app/note.txt
	flavour is ${FLAVOUR}, 'quoted' "too"
	NOTE

FROM --platform=$TARGETPLATFORM base AS final
MAINTAINER someone@example.com
COPY --from=base /srv/app/build-info.txt /info.txt
RUN ["/bin/sh", "-c", "echo exec-form > /exec.txt"]
SHELL ["/bin/sh", "-ec"]
RUN test "$(cat /info.txt)" = "mode=special flavour=special"
EXPOSE 8080 53/udp
VOLUME ["/data"]
USER app
STOPSIGNAL SIGINT
HEALTHCHECK --interval=2s --timeout=1s --retries=4 CMD ["true"]
ONBUILD RUN echo triggered > /tmp/onbuild.txt
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo $APP_HOME"]
"#;

#[test]
fn every_instruction_multistage_ignore_and_cache() {
    let b = Berth::new();
    let p = unique("bld");
    let ctx = b.dir.path().join("app");
    write(&ctx, "Dockerfile", EVERY_INSTRUCTION);
    write(&ctx, "a.conf", "a\n");
    write(&ctx, "b.conf", "b\n");
    write(&ctx, "src/main.txt", "main\n");
    write(&ctx, "src/util.txt", "util\n");
    write(&ctx, "src/secret.key", "do not ship\n");
    write(&ctx, "src/keep.key", "keep me\n");
    write(
        &ctx,
        ".dockerignore",
        "# keys stay out\n**/*.key\n!src/keep.key\n",
    );
    // A local tar for ADD to unpack.
    let tar_src = b.dir.path().join("tarsrc");
    write(&tar_src, "inside/hello.txt", "from a tar\n");
    let st = std::process::Command::new("tar")
        .arg("-cf")
        .arg(ctx.join("bundle.tar"))
        .arg("-C")
        .arg(&tar_src)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let f = b.compose(
        &p,
        "services:\n  app:\n    build:\n      context: ./app\n      args:\n        FLAVOUR: special\n",
    );
    let log = build(&b, &f, &[]);
    assert_eq!(runs(&log), 4, "{log}");
    let cfg = image_config(&b, &format!("{p}-app"));
    let c = &cfg["config"];
    assert_eq!(c["WorkingDir"], "/srv/app");
    assert_eq!(c["User"], "app");
    assert_eq!(c["StopSignal"], "SIGINT");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(c["Cmd"], serde_json::json!(["echo $APP_HOME"]));
    assert_eq!(c["Shell"], serde_json::json!(["/bin/sh", "-ec"]));
    assert_eq!(c["Labels"]["org.example.stage"], "base");
    assert_eq!(c["Labels"]["two"], "words here");
    assert!(c["ExposedPorts"]["8080/tcp"].is_object());
    assert!(c["ExposedPorts"]["53/udp"].is_object());
    assert!(c["Volumes"]["/data"].is_object());
    assert_eq!(
        c["OnBuild"],
        serde_json::json!(["RUN echo triggered > /tmp/onbuild.txt"])
    );
    assert_eq!(
        c["Healthcheck"],
        serde_json::json!({"Test": ["CMD", "true"], "Interval": 2_000_000_000u64, "Timeout": 1_000_000_000u64, "Retries": 4})
    );
    let env: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(env.contains(&"APP_HOME=/srv/app"), "{env:?}");
    assert!(env.contains(&"MODE=special"), "{env:?}");
    assert!(
        !env.iter().any(|e| e.starts_with("FLAVOUR=")),
        "ARGs stay out of the image: {env:?}"
    );
    // What the layers hold, top layer last.
    let layers = layer_dirs(&b, &cfg);
    let find = |rel: &str| -> Option<PathBuf> {
        layers
            .iter()
            .rev()
            .map(|l| l.join(rel))
            .find(|p| std::fs::symlink_metadata(p).is_ok())
    };
    let read = |rel: &str| {
        std::fs::read_to_string(find(rel).unwrap_or_else(|| panic!("{rel} in no layer"))).unwrap()
    };
    assert_eq!(
        read("srv/app/build-info.txt"),
        "mode=special flavour=special\n"
    );
    assert_eq!(read("info.txt"), "mode=special flavour=special\n");
    assert_eq!(read("srv/app/heredoc.txt"), "heredoc-ran\n");
    assert_eq!(
        read("srv/app/note.txt"),
        "flavour is special, 'quoted' \"too\"\n"
    );
    assert_eq!(read("exec.txt"), "exec-form\n");
    assert_eq!(cfg["author"], "someone@example.com");
    assert_eq!(read("opt/bundle/inside/hello.txt"), "from a tar\n");
    // .dockerignore: *.key out, keep.key back in.
    assert_eq!(
        read("srv/app/src-list.txt"),
        "keep.key\nmain.txt\nutil.txt\n"
    );
    assert!(find("srv/app/src/secret.key").is_none());
    // COPY --chown/--chmod.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(find("srv/app/conf/a.conf").unwrap()).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o640));
    // The deletion is a whiteout in the RUN's layer (overlay form: a 0:0 char device).
    use std::os::unix::fs::FileTypeExt;
    let wh = find("www/index.html").unwrap();
    let wm = std::fs::symlink_metadata(&wh).unwrap();
    assert!(
        wm.file_type().is_char_device() && wm.rdev() == 0,
        "{}",
        wh.display()
    );
    // Mount points of the build never land in a layer.
    for l in &layers[1..] {
        for sub in ["proc", "sys", "dev", "cache", "etc/hosts"] {
            assert!(!l.join(sub).exists(), "{} has {sub}", l.display());
        }
    }
    let count = || {
        files_under(&b.root.path().join("data/build-cache/mounts"))
            .into_iter()
            .find(|p| p.ends_with("count"))
            .map(|p| std::fs::read_to_string(p).unwrap().lines().count())
            .unwrap_or(0)
    };
    assert_eq!(count(), 1, "the cache mount kept the first RUN's write");

    // Nothing changed: no RUN, the same image.
    let id1 = cfg["rootfs"].clone();
    let log = build(&b, &f, &[]);
    assert_eq!(runs(&log), 0, "{log}");
    assert_eq!(image_config(&b, &format!("{p}-app"))["rootfs"], id1);
    // An ignored file changes: still nothing to do.
    write(&ctx, "src/secret.key", "changed\n");
    assert_eq!(runs(&build(&b, &f, &[])), 0);
    // One source file changes: the heredoc RUN after `COPY src/` and the last stage's RUN rerun,
    // the first RUN (before it) does not.
    write(&ctx, "src/util.txt", "util v2\n");
    assert_eq!(runs(&build(&b, &f, &[])), 3);
    assert_eq!(count(), 1);
    // A build arg changes: everything after its ARG reruns.
    let log = build(&b, &f, &["--build-arg", "FLAVOUR=special"]);
    assert_eq!(runs(&log), 0, "the same value as compose's: {log}");
    // --no-cache runs all of them.
    assert_eq!(runs(&build(&b, &f, &["--no-cache"])), 4);
    assert_eq!(count(), 2);

    // ONBUILD triggers run in a child build.
    let child = b.dir.path().join("child");
    write(
        &child,
        "Dockerfile",
        &format!("FROM {p}-app\nUSER root\nRUN test -f /tmp/onbuild.txt\n"),
    );
    let f2 = b.compose(
        &unique("bldc"),
        "services:\n  c:\n    build: ./child\n    image: berth-test/child:1\n",
    );
    assert_eq!(runs(&build(&b, &f2, &[])), 2, "trigger + own RUN");

    // builder prune drops the cache: the next build runs again.
    let out = b.run(&["builder", "prune"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(runs(&build(&b, &f, &[])), 4);

    // `target:` builds only the stages it needs.
    let ft = b.compose(
        &unique("bldt"),
        "services:\n  t:\n    build:\n      context: ./app\n      target: base\n      args:\n        FLAVOUR: special\n    image: berth-test/target:1\n",
    );
    let log = build(&b, &ft, &[]);
    assert_eq!(runs(&log), 0, "the base stage is cached: {log}");
    assert!(!log.contains("final"), "{log}");
    let cfg = image_config(&b, "berth-test/target:1");
    assert!(cfg["config"]["User"].as_str().unwrap_or("").is_empty());
}

#[test]
fn secret_is_never_in_a_layer() {
    let b = Berth::new();
    let p = unique("bsec");
    let ctx = b.dir.path().join("s");
    write(
        &ctx,
        "Dockerfile",
        "FROM berth-test/busybox:1\n\
         RUN --mount=type=secret,id=token,required wc -c < /run/secrets/token > /token-len && \\\n\
             test \"$(cat /run/secrets/token)\" = s3cr3t-XYZZY\n\
         RUN --mount=type=secret,id=token,target=/etc/tok cat /etc/tok | tr a-z A-Z | md5sum > /digest\n",
    );
    write(b.dir.path(), "token.txt", "s3cr3t-XYZZY");
    let f = b.compose(
        &p,
        "services:\n  s:\n    build:\n      context: ./s\n      secrets: [token]\nsecrets:\n  token:\n    file: ./token.txt\n",
    );
    build(&b, &f, &[]);
    let cfg = image_config(&b, &format!("{p}-s"));
    let layers = layer_dirs(&b, &cfg);
    assert_eq!(
        std::fs::read_to_string(layers.last().unwrap().join("digest"))
            .unwrap()
            .len(),
        36
    );
    assert_eq!(
        std::fs::read_to_string(layers[1].join("token-len"))
            .unwrap()
            .trim(),
        "12"
    );
    for l in &layers {
        for f in files_under(l) {
            if let Ok(s) = std::fs::read(&f) {
                assert!(
                    !String::from_utf8_lossy(&s).contains("s3cr3t-XYZZY"),
                    "the secret is in {}",
                    f.display()
                );
            }
        }
    }
    for l in &layers[1..] {
        assert!(
            !l.join("run").exists() && !l.join("etc/tok").exists(),
            "{}",
            l.display()
        );
    }
    // A required secret that is missing fails the build with the Dockerfile line.
    let f = b.compose(&unique("bsec"), "services:\n  s:\n    build: ./s\n");
    let err = b.fails(&f, &["build"]);
    assert!(
        err.contains("Dockerfile:2") && err.contains("secret token is required"),
        "{err}"
    );
}

#[test]
fn bad_input_names_the_dockerfile_line() {
    let b = Berth::new();
    let case = |df: &str| -> String {
        let p = unique("bbad");
        let ctx = b.dir.path().join(&p);
        write(&ctx, "Dockerfile", df);
        write(&ctx, "present.txt", "x");
        let f = b.compose(&p, &format!("services:\n  x:\n    build: ./{p}\n"));
        let err = b.fails(&f, &["build", "--progress", "plain"]);
        // Nothing half-made is tagged.
        let out = b.run(&["images", "-a"]);
        assert!(!String::from_utf8_lossy(&out.stdout).contains(&format!("{p}-x")));
        err
    };
    let e = case("FROM berth-test/busybox:1\nRUN echo to-stdout; echo to-stderr >&2; exit 3\n");
    assert!(
        e.contains("Dockerfile:2") && e.contains("exit code 3") && e.contains("to-stderr"),
        "{e}"
    );
    let e = case("FROM berth-test/busybox:1\nFROB x\n");
    assert!(
        e.contains("Dockerfile:2") && e.contains("unknown instruction: FROB"),
        "{e}"
    );
    let e = case("FROM berth-test/busybox:1\nCOPY missing.txt /\n");
    assert!(
        e.contains("Dockerfile:2") && e.contains("missing.txt: not found"),
        "{e}"
    );
    let e = case("FROM berth-test/busybox:1\nCOPY ../outside /\n");
    assert!(e.contains("outside the build context"), "{e}");
    let e = case("FROM berth-test/busybox:1\nCOPY --from=1 /x /\n");
    assert!(e.contains("Dockerfile:2") && e.contains("stage 1"), "{e}");
    let e = case("FROM berth-test/busybox:1\nADD https://example.com/x.tgz /\n");
    assert!(e.contains("remote URL"), "{e}");
    let e = case("# syntax=example.com/frontend:1\nFROM berth-test/busybox:1\n");
    assert!(e.contains("custom frontend"), "{e}");
    // No snapshot, netns or container of a failed RUN is left.
    let build_dir = b.root.path().join("data/build");
    assert_eq!(files_under(&build_dir), Vec::<PathBuf>::new());
}

#[test]
fn built_image_runs_under_up() {
    let b = Berth::new();
    let p = unique("bup");
    let ctx = b.dir.path().join("web");
    write(
        &ctx,
        "Dockerfile",
        "FROM berth-test/busybox:1\n\
         ENV GREETING=hi-from-env\n\
         WORKDIR /srv/site\n\
         COPY index.html ./\n\
         USER app\n\
         HEALTHCHECK --interval=1s --retries=3 CMD test -f /srv/site/index.html\n\
         CMD [\"sh\", \"-c\", \"echo \\\"$GREETING uid=$(id -u) cwd=$(pwd)\\\"; exec sleep 60\"]\n",
    );
    write(&ctx, "index.html", "<p>built</p>\n");
    let f = b.compose(
        &p,
        "services:\n  web:\n    build: ./web\n    init: true\n  other:\n    build: ./web\n    image: berth-test/shared:1\n    init: true\n",
    );
    // `up` builds what is missing, then runs it.
    b.ok_stderr(&f, &["up", "-d", "--wait"]);
    let logs = wait_for("the CMD's output", Duration::from_secs(10), || {
        let l = b.ok(&f, &["logs", "web"]);
        l.contains("hi-from-env").then_some(l)
    });
    assert!(
        logs.contains("hi-from-env uid=1000 cwd=/srv/site"),
        "{logs}"
    );
    let st = b.state(&p).unwrap();
    let web = st["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["service"] == "web")
        .unwrap()
        .clone();
    assert_eq!(web["health"], "healthy", "{web:#}");
    // --no-build never builds; a second up does not rebuild an image that exists.
    let err = b.ok_stderr(&f, &["up", "-d", "--no-build"]);
    assert!(!err.contains("Built"), "{err}");
    // --build rebuilds (from the cache).
    let err = b.ok_stderr(&f, &["up", "-d", "--build"]);
    assert!(err.contains("Built"), "{err}");
    // Both images are listed.
    let imgs = String::from_utf8_lossy(&b.run(&["images", "-a"]).stdout).to_string();
    assert!(
        imgs.contains(&format!("{p}-web")) && imgs.contains("berth-test/shared"),
        "{imgs}"
    );
    b.ok(&f, &["down"]);
}

#[test]
fn pagecount_build_example_runs() {
    let b = Berth::new();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // The base image examples/run.sh makes (plain busybox, no app files).
    let tar = b.dir.path().join("base.tar");
    let st = std::process::Command::new(root.join("examples/mkimage.sh"))
        .arg(&tar)
        .arg("berth-example/busybox:1")
        .status()
        .unwrap();
    assert!(st.success());
    let out = b.run(&["load", "-q", "-i", tar.to_str().unwrap()]);
    assert!(out.status.success());
    let dir = root.join("examples/pagecount-build");
    let yaml = std::fs::read_to_string(dir.join("compose.yaml")).unwrap();
    let p = unique("pcb");
    // The example as shipped, with the test's project name, its own image tag, a free port.
    let yaml = yaml
        .replace("name: pagecount-build\n", "")
        .replace("pagecount-app:1", &format!("{p}-app:1"))
        .replace("./app", dir.join("app").to_str().unwrap())
        .replace("\"8080:80\"", "\"127.0.0.1::80\"");
    let f = b.compose(&p, &yaml);
    let err = b.ok_stderr(&f, &["up", "-d", "--wait"]);
    assert_eq!(
        err.matches("Built (").count(),
        1,
        "one image for two services: {err}"
    );
    let port = b.port(&f, "web", 80, 1);
    for i in 1..=3 {
        let body = wait_for("a page", Duration::from_secs(10), || {
            http_get(port, "/cgi-bin/index").filter(|b| b.contains("viewed"))
        });
        assert!(body.contains(&format!("viewed {i} times")), "{body}");
    }
    let index = http_get(port, "/index.html").unwrap();
    assert!(
        index.contains("berth page count, built by berth build"),
        "{index}"
    );
}

#[test]
fn inline_dockerfile_extra_hosts_and_isolated_network() {
    let b = Berth::new();
    let p = unique("binl");
    std::fs::create_dir_all(b.dir.path().join("empty")).unwrap();
    let f = b.compose(
        &p,
        "services:\n  i:\n    build:\n      context: ./empty\n      extra_hosts:\n        - \"myhost=10.1.2.3\"\n      dockerfile_inline: |\n        FROM berth-test/busybox:1\n        RUN grep -q '10.1.2.3.*myhost' /etc/hosts\n        # Only loopback: the build network is private.\n        RUN test \"$(ls /sys/class/net)\" = lo && echo isolated > /net.txt\n",
    );
    let log = build(&b, &f, &[]);
    assert_eq!(runs(&log), 2, "{log}");
    let cfg = image_config(&b, &format!("{p}-i"));
    let layers = layer_dirs(&b, &cfg);
    assert_eq!(
        std::fs::read_to_string(layers.last().unwrap().join("net.txt")).unwrap(),
        "isolated\n"
    );
    // The /etc/hosts of the build is not the image's.
    assert!(!layers[1..].iter().any(|l| l.join("etc/hosts").exists()));
}

/// The file `rel` in the topmost layer of `cfg` that has it.
fn in_layers(b: &Berth, cfg: &serde_json::Value, rel: &str) -> Option<PathBuf> {
    layer_dirs(b, cfg)
        .iter()
        .rev()
        .map(|l| l.join(rel))
        .find(|p| std::fs::symlink_metadata(p).is_ok())
}

fn read_in_layers(b: &Berth, cfg: &serde_json::Value, rel: &str) -> String {
    let p = in_layers(b, cfg, rel).unwrap_or_else(|| panic!("{rel} is in no layer"));
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn named_contexts_copy_parents_exclude_and_from_image() {
    let b = Berth::new();
    let p = unique("bctx");
    let ctx = b.dir.path().join("main");
    write(
        &ctx,
        "Dockerfile",
        "FROM tools AS t\n\
         FROM berth-test/busybox:1\n\
         COPY --from=extra /data.txt /from-dir.txt\n\
         COPY --from=img /etc/group /img-group\n\
         COPY --from=berth-test/busybox:1 /etc/passwd /store-passwd\n\
         COPY --from=t /tool.sh /tool.sh\n\
         COPY --from=sib /sib.txt /sib.txt\n\
         COPY --parents a/x/one.txt b/*.txt /par/\n\
         COPY --parents ./src/./app/ /pivot/\n\
         COPY --exclude=*.log --exclude=**/*.tmp --exclude=tmp logs/ /logs/\n\
         ADD --chown=1000:1000 --chmod=600 owned.txt /owned.txt\n\
         RUN sh /tool.sh > /tool-ran.txt\n",
    );
    write(&ctx, "a/x/one.txt", "one\n");
    write(&ctx, "b/two.txt", "two\n");
    write(&ctx, "b/three.txt", "three\n");
    write(&ctx, "src/app/main.txt", "main\n");
    write(&ctx, "src/app/lib/l.txt", "lib\n");
    write(&ctx, "logs/keep.txt", "keep\n");
    write(&ctx, "logs/drop.log", "drop\n");
    write(
        &ctx,
        "logs/sub/deep.log",
        "kept: *.log is matched at the top only\n",
    );
    write(&ctx, "logs/sub/deep.tmp", "drop\n");
    write(&ctx, "logs/sub/deep.txt", "deep\n");
    write(&ctx, "logs/tmp/x.txt", "drop\n");
    write(&ctx, "owned.txt", "mine\n");
    write(b.dir.path(), "extra/data.txt", "from a directory context\n");
    write(b.dir.path(), "tools/tool.sh", "echo tool-ok\n");
    let sib = b.dir.path().join("sib");
    write(
        &sib,
        "Dockerfile",
        "FROM berth-test/busybox:1\nRUN echo sibling > /sib.txt\n",
    );
    let f = b.compose(
        &p,
        "services:\n  app:\n    build:\n      context: ./main\n      additional_contexts:\n        extra: ./extra\n        tools: ./tools\n        img: docker-image://berth-test/busybox:1\n        sib: service:sib\n  sib:\n    build: ./sib\n",
    );
    // Only `app` is asked for: `sib` builds first because app's context needs its image.
    let log = build(&b, &f, &["app"]);
    assert_eq!(runs(&log), 2, "{log}");
    let cfg = image_config(&b, &format!("{p}-app"));
    assert_eq!(
        read_in_layers(&b, &cfg, "from-dir.txt"),
        "from a directory context\n"
    );
    assert!(read_in_layers(&b, &cfg, "img-group").contains("app:x:1000"));
    assert!(read_in_layers(&b, &cfg, "store-passwd").contains("root:x:0"));
    assert_eq!(read_in_layers(&b, &cfg, "tool.sh"), "echo tool-ok\n");
    assert_eq!(read_in_layers(&b, &cfg, "tool-ran.txt"), "tool-ok\n");
    assert_eq!(read_in_layers(&b, &cfg, "sib.txt"), "sibling\n");
    // --parents keeps the source paths (after a /./ pivot).
    assert_eq!(read_in_layers(&b, &cfg, "par/a/x/one.txt"), "one\n");
    assert_eq!(read_in_layers(&b, &cfg, "par/b/two.txt"), "two\n");
    assert_eq!(read_in_layers(&b, &cfg, "par/b/three.txt"), "three\n");
    assert!(in_layers(&b, &cfg, "par/one.txt").is_none());
    assert_eq!(read_in_layers(&b, &cfg, "pivot/app/main.txt"), "main\n");
    assert_eq!(read_in_layers(&b, &cfg, "pivot/app/lib/l.txt"), "lib\n");
    assert!(in_layers(&b, &cfg, "pivot/src").is_none());
    // --exclude: patterns as .dockerignore's, below the source (`*.log` at its top only,
    // `**/*.tmp` at any depth) and a directory.
    assert_eq!(read_in_layers(&b, &cfg, "logs/keep.txt"), "keep\n");
    assert_eq!(read_in_layers(&b, &cfg, "logs/sub/deep.txt"), "deep\n");
    assert!(in_layers(&b, &cfg, "logs/sub/deep.log").is_some());
    for gone in ["logs/drop.log", "logs/sub/deep.tmp", "logs/tmp"] {
        assert!(in_layers(&b, &cfg, gone).is_none(), "{gone} was copied");
    }
    // ADD --chown/--chmod.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(in_layers(&b, &cfg, "owned.txt").unwrap()).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o600));
    // An excluded file changing does not rerun anything; a copied one does.
    write(&ctx, "logs/drop.log", "changed\n");
    assert_eq!(runs(&build(&b, &f, &["app"])), 0);
    write(&ctx, "logs/keep.txt", "changed\n");
    assert_eq!(runs(&build(&b, &f, &["app"])), 1);
    // A remote additional context is refused with where it was written.
    let f2 = b.compose(
        &unique("bctx"),
        "services:\n  app:\n    build:\n      context: ./main\n      additional_contexts:\n        extra: https://github.com/example/repo.git\n",
    );
    let err = b.fails(&f2, &["build"]);
    assert!(
        err.contains(".yaml:7:9: services.app.build.additional_contexts: extra:")
            && err.contains("remote context"),
        "{err}"
    );
}

/// `dir` gets `bin` and the shared libraries it loads (with the dynamic loader as `ld.so`), so
/// a RUN can run the host's binary from a bind mount: `/m/ld.so --library-path /m /m/NAME`.
fn host_binary_dir(bin: &str, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let out = std::process::Command::new("ldd").arg(bin).output().unwrap();
    assert!(out.status.success());
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let path = l
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        let Some(path) = path else { continue };
        let name = if l.contains("ld-linux") {
            "ld.so".to_string()
        } else {
            path.file_name().unwrap().to_string_lossy().into_owned()
        };
        std::fs::copy(&path, dir.join(name)).unwrap();
    }
    std::fs::copy(bin, dir.join(Path::new(bin).file_name().unwrap())).unwrap();
}

/// A real ssh-agent on a socket, killed on drop.
struct Agent(std::process::Child);
impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ssh_agent_reaches_run_and_no_layer() {
    let b = Berth::new();
    if !Path::new("/usr/bin/ssh-agent").exists() || !Path::new("/usr/bin/ssh-keygen").exists() {
        eprintln!("SKIPPED: openssh-client is not installed");
        return;
    }
    let d = b.dir.path();
    let ctx = d.join("s");
    host_binary_dir("/usr/bin/ssh-add", &ctx.join("hostbin"));
    // Two keys: one loaded in an agent the "user" runs, one given to the build as a file.
    for (name, comment) in [
        ("user_key", "berth-user-key"),
        ("deploy_key", "berth-deploy-key"),
    ] {
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(d.join(name))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let sock = d.join("agent.sock");
    let agent = Agent(
        std::process::Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the agent's socket", Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&sock).ok()
    });
    let st = std::process::Command::new("ssh-add")
        .arg(d.join("user_key"))
        .env("SSH_AUTH_SOCK", &sock)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let run_add = "/hostbin/ld.so --library-path /hostbin /hostbin/ssh-add -l";
    write(
        &ctx,
        "Dockerfile",
        &format!(
            "FROM berth-test/busybox:1\n\
             RUN --mount=type=bind,source=hostbin,target=/hostbin --mount=type=ssh \\\n\
                 {run_add} > /default.txt && echo \"sock=$SSH_AUTH_SOCK\" >> /default.txt\n\
             RUN --mount=type=bind,source=hostbin,target=/hostbin \\\n\
                 --mount=type=ssh,id=deploy,target=/tmp/agent,required,uid=1000,mode=0600 \\\n\
                 su app -s /bin/sh -c 'SSH_AUTH_SOCK=/tmp/agent {run_add}' > /deploy.txt\n"
        ),
    );
    let p = unique("bssh");
    let f = b.compose(
        &p,
        "services:\n  s:\n    build:\n      context: ./s\n      ssh:\n        - default\n        - deploy=./deploy_key\n",
    );
    let out = b
        .cmd()
        .env("SSH_AUTH_SOCK", &sock)
        .arg("-f")
        .arg(&f)
        .args(["build", "--progress", "plain"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    let cfg = image_config(&b, &format!("{p}-s"));
    let default = read_in_layers(&b, &cfg, "default.txt");
    assert!(
        default.contains("berth-user-key") && default.contains("sock=/run/buildkit/ssh_agent.0"),
        "{default}"
    );
    let deploy = read_in_layers(&b, &cfg, "deploy.txt");
    assert!(
        deploy.contains("berth-deploy-key") && !deploy.contains("berth-user-key"),
        "{deploy}"
    );
    // No key, socket or mount point in any layer.
    let key = std::fs::read_to_string(d.join("deploy_key")).unwrap();
    let key_body = key.lines().nth(1).unwrap().to_string();
    for l in &layer_dirs(&b, &cfg)[1..] {
        for f in files_under(l) {
            let rel = f.strip_prefix(l).unwrap().to_string_lossy().into_owned();
            assert!(
                !rel.starts_with("run") && !rel.starts_with("hostbin") && rel != "tmp/agent",
                "{rel} in a layer"
            );
            if let Ok(s) = std::fs::read(&f) {
                assert!(!String::from_utf8_lossy(&s).contains(&key_body), "{rel}");
            }
        }
    }
    // The agent berth started for the key file is gone.
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let root = b.root.path().to_string_lossy().into_owned();
    assert!(
        !String::from_utf8_lossy(&ps.stdout)
            .lines()
            .any(|l| l.contains("ssh-agent") && l.contains(&root)),
        "berth's ssh-agent is still running"
    );
    // A required ssh id that is not given fails with the Dockerfile line; without
    // $SSH_AUTH_SOCK, `default` fails naming the compose key.
    let f = b.compose(
        &unique("bssh"),
        "services:\n  s:\n    build:\n      context: ./s\n      ssh: [default]\n",
    );
    let out = b
        .cmd()
        .env("SSH_AUTH_SOCK", &sock)
        .arg("-f")
        .arg(&f)
        .args(["build", "--no-cache"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("Dockerfile:4") && err.contains("ssh deploy is required"),
        "{err}"
    );
    // `build --ssh ID=KEY` gives it.
    let key_arg = format!("deploy={}", d.join("deploy_key").display());
    let out = b
        .cmd()
        .env("SSH_AUTH_SOCK", &sock)
        .arg("-f")
        .arg(&f)
        .args(["build", "--no-cache", "--ssh", &key_arg])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = b
        .cmd()
        .env_remove("SSH_AUTH_SOCK")
        .arg("-f")
        .arg(&f)
        .args(["build"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(":6:12: services.s.build.ssh: default: forwarding the ssh agent needs $SSH_AUTH_SOCK"),
        "{err}"
    );
    drop(agent);
}

const CACHED_BUILD: &str = "FROM berth-test/busybox:1 AS build\n\
     COPY a.txt /a.txt\n\
     RUN cat /a.txt > /b.txt && echo built >> /b.txt\n\
     FROM berth-test/busybox:1\n\
     COPY --from=build /b.txt /b.txt\n\
     COPY c.txt /c.txt\n\
     RUN cat /b.txt /c.txt > /final.txt\n";

#[test]
fn cache_to_local_and_cache_from_on_fresh_roots() {
    let a = Berth::new();
    let ctx = a.dir.path().join("app");
    write(&ctx, "Dockerfile", CACHED_BUILD);
    write(&ctx, "a.txt", "a\n");
    write(&ctx, "c.txt", "c\n");
    let cache = a.dir.path().join("cache");
    let reg = common::registry::Registry::start();
    let image = match &reg {
        Some(r) => format!("127.0.0.1:{}/bcache/app:1", r.port),
        None => "berth-test/bcache:1".to_string(),
    };
    let yaml = |extra: &str| {
        format!(
            "services:\n  app:\n    image: {image}\n    build:\n      context: {}\n{extra}",
            ctx.display()
        )
    };
    let p = unique("bcch");
    let f = a.compose(
        &p,
        &yaml(&format!(
            "      cache_to: [\"type=local,dest={},mode=max\"]\n",
            cache.display()
        )),
    );
    assert_eq!(runs(&build(&a, &f, &[])), 2);
    assert!(cache.join("oci-layout").is_file() && cache.join("index.json").is_file());
    // The export is an OCI layout whose blobs match their digests.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let blob = |d: &str| {
        cache
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(digest)).unwrap()).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    // Five layer steps; the RUN's /b.txt and its COPY --from are one layer when their mtimes
    // fall in the same second (the same tar).
    assert_eq!(config["records"].as_array().unwrap().len(), 5, "{config:#}");
    assert!((4..=5).contains(&layers.len()), "{manifest:#}");
    assert_eq!(layers.len(), config["diff_ids"].as_array().unwrap().len());
    for l in layers {
        let d = l["digest"].as_str().unwrap();
        let out = std::process::Command::new("sha256sum")
            .arg(blob(d))
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(d.trim_start_matches("sha256:")));
    }

    // A fresh root importing the local cache runs nothing, and makes the same files.
    let b = Berth::new();
    let fb = b.compose(
        &p,
        &yaml(&format!(
            "      cache_from: [\"type=local,src={}\"]\n",
            cache.display()
        )),
    );
    let log = build(&b, &fb, &[]);
    assert_eq!(runs(&log), 0, "{log}");
    let cfg = image_config(&b, &image);
    assert_eq!(read_in_layers(&b, &cfg, "final.txt"), "a\nbuilt\nc\n");
    // The imported records are in this root's cache now: no cache_from needed any more.
    let fb2 = b.compose(&unique("bcch"), &yaml(""));
    assert_eq!(runs(&build(&b, &fb2, &[])), 0);
    // One source file changes: only the RUN after its COPY runs.
    let ctx_edit = b.dir.path().join("app2");
    write(&ctx_edit, "Dockerfile", CACHED_BUILD);
    write(&ctx_edit, "a.txt", "a\n");
    write(&ctx_edit, "c.txt", "c v2\n");
    let fb3 = b.compose(
        &unique("bcch"),
        &format!(
            "services:\n  app:\n    image: berth-test/edited:1\n    build:\n      context: {}\n      cache_from: [\"type=local,src={}\"]\n",
            ctx_edit.display(),
            cache.display()
        ),
    );
    assert_eq!(runs(&build(&b, &fb3, &[])), 1);

    // Unsupported cache types: cache_to is an error at its line, cache_from a warning.
    let fe = a.compose(
        &unique("bcch"),
        &yaml("      cache_to: [\"type=registry,ref=example.com/x:cache\"]\n"),
    );
    let err = a.fails(&fe, &["build"]);
    assert!(
        err.contains(".yaml:7:17: services.app.build.cache_to: type=registry")
            && err.contains("not supported"),
        "{err}"
    );
    let fw = a.compose(&unique("bcch"), &yaml("      cache_from: [\"type=gha\"]\n"));
    let log = build(&a, &fw, &[]);
    assert!(
        log.contains("warning:") && log.contains("services.app.build.cache_from: type=gha"),
        "{log}"
    );

    // cache_from an image: pushed from the first root, pulled by a fresh one. It carries the
    // records of its own stage (BuildKit's mode=min): the build stage's RUN runs again, the
    // final stage's steps are hits.
    let Some(_reg) = reg else {
        eprintln!("SKIPPED (image part): docker-registry is not installed");
        return;
    };
    a.ok(&f, &["push"]);
    let c = Berth::new();
    let fc = c.compose(
        &unique("bcch"),
        &format!(
            "services:\n  app:\n    image: berth-test/from-image:1\n    build:\n      context: {}\n      cache_from: [\"{image}\"]\n",
            ctx.display()
        ),
    );
    let log = build(&c, &fc, &[]);
    assert_eq!(runs(&log), 1, "{log}");
    let cfg = image_config(&c, "berth-test/from-image:1");
    assert_eq!(read_in_layers(&c, &cfg, "final.txt"), "a\nbuilt\nc\n");
}

#[test]
fn run_mounts_tmpfs_bind_and_build_networks() {
    let b = Berth::new();
    let ctx = b.dir.path().join("m");
    write(
        &ctx,
        "Dockerfile",
        "FROM berth-test/busybox:1 AS gen\n\
         RUN echo generated > /gen.txt\n\
         FROM berth-test/busybox:1\n\
         RUN --mount=type=bind,from=gen,source=/gen.txt,target=/g.txt cat /g.txt > /from-gen.txt\n\
         RUN --mount=type=tmpfs,target=/scratch grep -q ' /scratch tmpfs ' /proc/mounts && \\\n\
             echo x > /scratch/f && test -f /scratch/f\n\
         RUN --mount=type=bind,target=/ctx cat /ctx/data.txt > /copied.txt && \\\n\
             if touch /ctx/new 2>/dev/null; then exit 1; fi && test ! -e /ctx/ignored.txt\n\
         RUN --mount=type=bind,source=sub,target=/sub,rw echo scribble > /sub/written.txt && \\\n\
             cat /sub/in.txt > /rw.txt\n\
         RUN tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort > /ifaces.txt\n\
         RUN --network=none tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' > /ifaces-none.txt\n",
    );
    write(&ctx, "data.txt", "context data\n");
    write(&ctx, "sub/in.txt", "sub in\n");
    // The bound context is the one the build sees: .dockerignore'd files are not in it.
    write(&ctx, "ignored.txt", "not in the context\n");
    write(&ctx, ".dockerignore", "ignored.txt\n");
    let build_with = |network: &str| -> serde_json::Value {
        let p = unique("bnet");
        let net = if network.is_empty() {
            String::new()
        } else {
            format!("      network: {network}\n")
        };
        let f = b.compose(
            &p,
            &format!("services:\n  m:\n    build:\n      context: ./m\n{net}"),
        );
        build(&b, &f, &[]);
        image_config(&b, &format!("{p}-m"))
    };
    let cfg = build_with("");
    assert_eq!(read_in_layers(&b, &cfg, "copied.txt"), "context data\n");
    assert_eq!(read_in_layers(&b, &cfg, "from-gen.txt"), "generated\n");
    assert_eq!(read_in_layers(&b, &cfg, "rw.txt"), "sub in\n");
    // Writes to a rw bind are discarded, mount points are not in layers.
    assert!(!ctx.join("sub/written.txt").exists() && !ctx.join("new").exists());
    for l in &layer_dirs(&b, &cfg)[1..] {
        for sub in ["scratch", "ctx", "sub"] {
            assert!(!l.join(sub).exists(), "{} has {sub}", l.display());
        }
    }
    // Builds are offline by default (berth's choice; Docker's default bridge is not) and with
    // `network: none`: loopback only.
    assert_eq!(read_in_layers(&b, &cfg, "ifaces.txt"), "lo\n");
    let none = build_with("none");
    assert_eq!(read_in_layers(&b, &none, "ifaces.txt"), "lo\n");
    // `network: host`: the host's interfaces; `RUN --network=none` still gets loopback only.
    let host = build_with("host");
    let mut mine: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .skip(2)
        .map(|l| l.split(':').next().unwrap().trim().to_string())
        .collect();
    mine.sort();
    let theirs = read_in_layers(&b, &host, "ifaces.txt");
    assert!(mine.len() > 1 && theirs.lines().count() > 1, "{theirs}");
    assert_eq!(read_in_layers(&b, &host, "ifaces-none.txt"), "lo\n");
    // What a bind mounts is part of the RUN's key: a changed file reruns the RUN that reads it.
    write(&ctx, "data.txt", "context data v2\n");
    let cfg = build_with("");
    assert_eq!(read_in_layers(&b, &cfg, "copied.txt"), "context data v2\n");
    // A bad network is refused where it is written.
    let f = b.compose(
        &unique("bnet"),
        "services:\n  m:\n    build:\n      context: ./m\n      network: mynet\n",
    );
    let err = b.fails(&f, &["build"]);
    assert!(
        err.contains(".yaml:6:16: services.m.build.network: \"mynet\""),
        "{err}"
    );
}

#[test]
fn remote_contexts_name_file_line_and_key() {
    let b = Berth::new();
    for (yaml, at) in [
        (
            "services:\n  g:\n    build: https://github.com/docker/getting-started.git\n",
            ".yaml:4:12: services.g.build.context: ",
        ),
        (
            "services:\n  g:\n    build:\n      context: git@github.com:example/app.git#main\n",
            ".yaml:5:16: services.g.build.context: ",
        ),
        (
            "services:\n  g:\n    build:\n      context: https://example.com/ctx.tar.gz\n",
            ".yaml:5:16: services.g.build.context: ",
        ),
    ] {
        let f = b.compose(&unique("bgit"), yaml);
        let err = b.fails(&f, &["build"]);
        assert!(
            err.contains(at) && err.contains("remote context"),
            "{yaml}\n{err}"
        );
    }
}

/// compose's e2e `build-dependencies` case, on the busybox base: `FROM base` where `base` is
/// `additional_contexts: {base: "service:base"}`, and `up` runs the result.
#[test]
fn from_a_service_context_runs_under_up() {
    let b = Berth::new();
    let p = unique("bdep");
    let ctx = b.dir.path().join("dep");
    write(
        &ctx,
        "base.dockerfile",
        "FROM berth-test/busybox:1\nCOPY hello.txt /hello.txt\nCMD [\"/bin/true\"]\n",
    );
    write(
        &ctx,
        "service.dockerfile",
        "FROM base\nCMD [\"sh\", \"-c\", \"cat /hello.txt; exec sleep 60\"]\n",
    );
    write(&ctx, "hello.txt", "hello from base\n");
    let f = b.compose(
        &p,
        "services:\n  base:\n    init: true\n    build:\n      context: ./dep\n      dockerfile: base.dockerfile\n  service:\n    init: true\n    build:\n      context: ./dep\n      additional_contexts:\n        base: \"service:base\"\n      dockerfile: service.dockerfile\n",
    );
    let err = b.ok_stderr(&f, &["up", "-d", "service"]);
    // base was built first (service's FROM needs it), once.
    assert_eq!(err.matches("Built (").count(), 2, "{err}");
    let logs = wait_for("the service's output", Duration::from_secs(10), || {
        let l = b.ok(&f, &["logs", "service"]);
        l.contains("hello from base").then_some(l)
    });
    assert!(logs.contains("hello from base"), "{logs}");
    let cfg = image_config(&b, &format!("{p}-service"));
    assert_eq!(
        cfg["config"]["Cmd"],
        serde_json::json!(["sh", "-c", "cat /hello.txt; exec sleep 60"])
    );
    b.ok(&f, &["down"]);
}

/// The warm path's shortcuts never hide an edit: the context's stat cache (digests reused by
/// stat) and the remembered hash of `COPY --from` sources (by source layers).
#[test]
fn edits_seen_through_stat_cache_and_copy_from_memo() {
    let b = Berth::new();
    let p = unique("bldc");
    let ctx = b.dir.path().join("app");
    write(
        &ctx,
        "Dockerfile",
        "FROM berth-test/busybox:1 AS build\nCOPY src/ /src/\nRUN cat /src/a.txt /src/b.txt > /out.txt\n\
         FROM berth-test/busybox:1\nCOPY --from=build /out.txt /app/out.txt\nCMD [\"cat\", \"/app/out.txt\"]\n",
    );
    write(&ctx, "src/a.txt", "aaaa\n");
    write(&ctx, "src/b.txt", "bbbb\n");
    let f = b.compose(&p, "services:\n  app:\n    build: ./app\n");
    let out_txt = |b: &Berth| {
        let cfg = image_config(b, &format!("{p}-app"));
        let last = layer_dirs(b, &cfg).pop().unwrap();
        std::fs::read_to_string(last.join("app/out.txt")).unwrap()
    };
    assert_eq!(runs(&build(&b, &f, &[])), 1);
    assert_eq!(out_txt(&b), "aaaa\nbbbb\n");
    // Past the racy window, a rebuild stores clean digests; the next reuses them.
    std::thread::sleep(Duration::from_millis(1300));
    let id = image_config(&b, &format!("{p}-app"))["rootfs"].clone();
    assert_eq!(runs(&build(&b, &f, &[])), 0);
    assert_eq!(runs(&build(&b, &f, &[])), 0);
    assert_eq!(image_config(&b, &format!("{p}-app"))["rootfs"], id);
    // The same size, the mtime put back: still an edit (content hashed again).
    let a = ctx.join("src/a.txt");
    let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
    std::fs::write(&a, "AAAA\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&a)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(runs(&build(&b, &f, &[])), 1);
    // The final stage's COPY --from read the new file, not a remembered hash of the old one.
    assert_eq!(out_txt(&b), "AAAA\nbbbb\n");
    // Back to the first content: every step is the first build's, from the cache.
    std::fs::write(&a, "aaaa\n").unwrap();
    assert_eq!(runs(&build(&b, &f, &[])), 0);
    assert_eq!(out_txt(&b), "aaaa\nbbbb\n");
    assert_eq!(image_config(&b, &format!("{p}-app"))["rootfs"], id);
}

#[test]
fn copy_written_into_the_upper_dir_keeps_overlay_rules() {
    // COPY writes straight into the step's upper dir: the result seen through the layers must
    // be the one a write through the overlay gives (files replace, directories merge, existing
    // parents keep their lower metadata, a symlink is replaced and not followed).
    let b = Berth::new();
    let p = unique("bldu");
    let ctx = b.dir.path().join("app");
    write(
        &ctx,
        "Dockerfile",
        "FROM berth-test/busybox:1\n\
         RUN mkdir -p /dst/keep /dst/d /real && echo old > /dst/f && echo kept > /dst/keep/old \
         && echo x > /dst/d/inner && ln -s /real /dst/l && chown 7:8 /dst && chmod 710 /dst\n\
         COPY tree/ /dst/\n\
         COPY one.txt /dst/keep/\n\
         RUN test \"$(stat -c %a:%u:%g /dst)\" = 710:7:8 && test \"$(cat /dst/f)\" = new \
         && test -f /dst/d && test \"$(cat /dst/d)\" = file && test -d /dst/l && ! test -L /dst/l \
         && test -f /dst/l/in && ! test -e /real/in && test \"$(cat /dst/keep/old)\" = kept \
         && test -f /dst/keep/new && test \"$(cat /dst/keep/one.txt)\" = one \
         && test \"$(stat -c %a:%u /dst/keep/new)\" = 644:0\n",
    );
    write(&ctx, "tree/f", "new\n");
    write(&ctx, "tree/d", "file\n");
    write(&ctx, "tree/l/in", "in\n");
    write(&ctx, "tree/keep/new", "n\n");
    write(&ctx, "one.txt", "one\n");
    for f in ["tree/f", "tree/d", "tree/l/in", "tree/keep/new", "one.txt"] {
        std::fs::set_permissions(
            ctx.join(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
    }
    let f = b.compose(&p, "services:\n  app:\n    build: ./app\n");
    assert_eq!(runs(&build(&b, &f, &[])), 2);
    // The first COPY's layer holds /dst copied up with its lower metadata, not a new 0755 dir.
    let cfg = image_config(&b, &format!("{p}-app"));
    let dirs = layer_dirs(&b, &cfg);
    let copy_layer = &dirs[dirs.len() - 3];
    let m = std::fs::metadata(copy_layer.join("dst")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o710, 7, 8));
    // The snapshots removed off the build's path are all gone when it returns.
    assert_eq!(
        files_under(&b.root.path().join("data/build")),
        Vec::<PathBuf>::new()
    );
}

/// A COPY from the context places files as links to the build's file store: after an edit, the
/// new layer shares the unchanged files' inodes with the old one and holds the edited file's
/// new content; each file looks as a copy would (mode, owner, mtime), and `--no-cache` copies.
#[test]
fn copy_links_unchanged_context_files_from_the_file_store() {
    use std::os::unix::fs::MetadataExt;
    let b = Berth::new();
    let p = unique("bldf");
    let ctx = b.dir.path().join("app");
    write(
        &ctx,
        "Dockerfile",
        "FROM berth-test/busybox:1\nCOPY src/ /src/\n\
         RUN test \"$(cat /src/a.txt /src/sub/c.txt)\" = \"$(cat /src/expect)\"\n",
    );
    write(&ctx, "src/a.txt", "aaaa\n");
    write(&ctx, "src/b.sh", "#!/bin/sh\n");
    write(&ctx, "src/sub/c.txt", "cccc\n");
    write(&ctx, "src/expect", "aaaa\ncccc\n");
    std::fs::set_permissions(
        ctx.join("src/b.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o751),
    )
    .unwrap();
    let f = b.compose(&p, "services:\n  app:\n    build: ./app\n");
    let copy_layer = |b: &Berth| {
        let cfg = image_config(b, &format!("{p}-app"));
        // The RUN only tests, so it adds no layer: the COPY's is the top one.
        layer_dirs(b, &cfg).pop().unwrap()
    };
    assert_eq!(runs(&build(&b, &f, &[])), 1);
    let first = copy_layer(&b);
    let m = |l: &Path, f: &str| std::fs::symlink_metadata(l.join(f)).unwrap();
    for (f, mode) in [
        ("src/a.txt", 0o644),
        ("src/b.sh", 0o751),
        ("src/sub/c.txt", 0o644),
    ] {
        let (got, src) = (m(&first, f), m(&ctx, f));
        assert_eq!(got.mode() & 0o7777, mode, "{f}");
        assert_eq!((got.uid(), got.gid()), (0, 0), "{f}");
        assert_eq!(
            (got.mtime(), got.mtime_nsec()),
            (src.mtime(), src.mtime_nsec())
        );
        assert_eq!(
            got.nlink(),
            2,
            "{f}: the layer's file and the store's entry"
        );
        assert_ne!(got.ino(), src.ino(), "{f}: never the context's own file");
    }
    // Edit one file: the next layer links the others to the same inodes.
    write(&ctx, "src/a.txt", "AAAA\n");
    write(&ctx, "src/expect", "AAAA\ncccc\n");
    assert_eq!(runs(&build(&b, &f, &[])), 1);
    let second = copy_layer(&b);
    assert_ne!(first, second);
    assert_eq!(
        std::fs::read_to_string(second.join("src/a.txt")).unwrap(),
        "AAAA\n"
    );
    assert_eq!(
        std::fs::read_to_string(first.join("src/a.txt")).unwrap(),
        "aaaa\n"
    );
    assert_eq!(m(&second, "src/b.sh").ino(), m(&first, "src/b.sh").ino());
    assert_eq!(
        m(&second, "src/sub/c.txt").ino(),
        m(&first, "src/sub/c.txt").ino()
    );
    assert_eq!(m(&first, "src/b.sh").nlink(), 3);
    // `--no-cache` copies: files of their own, looking the same. (A second later, so that
    // its directories' mtimes, and so its layer, differ from the linked one's.)
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(runs(&build(&b, &f, &["--no-cache"])), 1);
    let third = copy_layer(&b);
    for f in ["src/a.txt", "src/b.sh", "src/sub/c.txt"] {
        let (a, c) = (m(&second, f), m(&third, f));
        assert_eq!(c.nlink(), 1, "{f}");
        assert_eq!(
            (
                a.mode(),
                a.uid(),
                a.gid(),
                a.mtime(),
                a.mtime_nsec(),
                a.len()
            ),
            (
                c.mode(),
                c.uid(),
                c.gid(),
                c.mtime(),
                c.mtime_nsec(),
                c.len()
            ),
            "{f}"
        );
        assert_eq!(
            std::fs::read(second.join(f)).unwrap(),
            std::fs::read(third.join(f)).unwrap()
        );
    }
    // `builder prune` drops the store with the rest of the cache.
    b.ok(&f, &["builder", "prune"]);
    assert!(!b.root.path().join("data/build-cache/files").exists());
}
