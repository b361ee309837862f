//! Calls into the container runtime. Anything that creates processes in new namespaces runs
//! in a re-exec of this binary (`berth __runtime …`, single-threaded, no tokio); calls that do
//! not fork (state, kill, delete) could run in-process, but going through the same CLI keeps
//! one code path and one error format.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// The binary to re-exec: our own executable.
/// After an upgrade the running binary is unlinked (`… (deleted)`); a long-lived supervisor
/// then re-execs the new binary at the same path.
pub fn self_exe() -> PathBuf {
    match std::env::current_exe() {
        Ok(p) => {
            let s = p.to_string_lossy();
            match s.strip_suffix(" (deleted)") {
                Some(orig) if std::path::Path::new(orig).exists() => PathBuf::from(orig),
                _ => p,
            }
        }
        Err(_) => PathBuf::from("/proc/self/exe"),
    }
}

pub struct Runtime {
    pub root: PathBuf,
}

/// The container's stdio, handed to `create` (runc pass-through mode).
pub struct CreateIo {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

impl Runtime {
    pub fn new(root: &Path) -> Runtime {
        Runtime {
            root: root.to_path_buf(),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(self_exe());
        c.arg("__runtime").arg("--root").arg(&self.root);
        c.kill_on_drop(false);
        c
    }

    /// `create`: returns the container init's pid once it waits for `start`.
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        io: CreateIo,
        console_socket: Option<&Path>,
    ) -> anyhow::Result<i32> {
        let pid_file = bundle.join("init.pid");
        let _ = std::fs::remove_file(&pid_file);
        let mut c = self.cmd();
        c.arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file);
        if let Some(s) = console_socket {
            c.arg("--console-socket").arg(s);
        }
        c.arg(id);
        c.stdin(io.stdin).stdout(io.stdout).stderr(io.stderr);
        // The runtime reports its own errors on stderr, which is the container's stderr here;
        // it also writes them to a file in the bundle so we can show them.
        let err_file = bundle.join("create.err");
        let _ = std::fs::remove_file(&err_file);
        c.env("BERTH_RUNTIME_ERROR_FILE", &err_file);
        crate::trace::step(|| format!("{id}: runtime create (re-exec)"));
        let status = c.status().await.context("running the container runtime")?;
        if !status.success() {
            let msg = std::fs::read_to_string(&err_file).unwrap_or_default();
            let msg = msg.trim();
            if msg.is_empty() {
                bail!("the runtime failed to create {id} ({status})");
            }
            bail!("{msg}");
        }
        let pid = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?
            .trim()
            .parse::<i32>()
            .context("parsing the init pid")?;
        crate::trace::step(|| format!("{id}: runtime created, init {pid}"));
        Ok(pid)
    }

    async fn simple(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut c = self.cmd();
        c.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = c.output().await.context("running the container runtime")?;
        if !out.status.success() {
            bail!(
                "runtime {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// `start` and `delete` fork nothing, so they run in-process (on a blocking thread): two
    /// process spawns fewer per container lifecycle.
    pub async fn start(&self, id: &str) -> anyhow::Result<()> {
        let (root, id) = (self.root.clone(), id.to_string());
        let id2 = id.clone();
        tokio::task::spawn_blocking(move || berth_runtime::container::start(&root, &id)).await??;
        crate::trace::step(|| format!("{id2}: runtime start"));
        Ok(())
    }

    pub async fn delete(&self, id: &str, force: bool) -> anyhow::Result<()> {
        let (root, id) = (self.root.clone(), id.to_string());
        tokio::task::spawn_blocking(move || berth_runtime::container::delete(&root, &id, force))
            .await??;
        Ok(())
    }

    pub async fn pause(&self, id: &str) -> anyhow::Result<()> {
        self.simple(&["pause", id]).await.map(|_| ())
    }

    pub async fn resume(&self, id: &str) -> anyhow::Result<()> {
        self.simple(&["resume", id]).await.map(|_| ())
    }

    /// Host pids of the container's processes.
    pub async fn ps(&self, id: &str) -> anyhow::Result<Vec<i32>> {
        let out = self.simple(&["ps", "--format", "json", id]).await?;
        let v: Vec<i32> = serde_json::from_str(out.trim()).context("parsing runtime ps output")?;
        Ok(v)
    }

    /// An `exec` process: the caller decides stdio; the child exits with the command's status.
    pub fn exec(&self, id: &str, opts: &ExecOpts) -> anyhow::Result<Child> {
        let mut c = self.cmd();
        c.arg("exec");
        if opts.tty {
            c.arg("--tty");
        }
        if let Some(cwd) = &opts.cwd {
            c.arg("--cwd").arg(cwd);
        }
        for e in &opts.env {
            c.arg("--env").arg(e);
        }
        if let Some(u) = &opts.user {
            c.arg("--user").arg(u);
        }
        c.arg(id).args(&opts.args);
        c.stdin(if opts.stdin {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
        if opts.capture {
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        c.kill_on_drop(true);
        c.spawn().context("starting exec")
    }
}

#[derive(Debug, Clone, Default)]
pub struct ExecOpts {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub tty: bool,
    pub stdin: bool,
    pub capture: bool,
}
