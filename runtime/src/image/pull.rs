//! Registry pulls (OCI distribution API), synchronous over `ureq` so the crate stays tokio-free.
//!
//! Anonymous and bearer-token auth (the `WWW-Authenticate` challenge Docker Hub sends), basic
//! auth from `~/.docker/config.json` `auths`; plain HTTP only for localhost/127.0.0.1/::1 or
//! listed insecure registries. Manifest lists and OCI indexes are resolved to the host platform.
//! Layers are fetched by a few threads at once and streamed straight into the unpacker (blob and
//! diff_id digests checked on the way); a failed or tampered layer leaves nothing behind.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::ImageError;
use super::manifest::{choose_platform, platforms, AnyManifest, Descriptor, ACCEPT};
use super::reference::Reference;
use super::unpack::sha256_hex;
use super::{host_platform, Image, ImageRecord, ImageStore};

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registries (`host[:port]`) spoken to over plain HTTP besides localhost/127.0.0.1/::1.
    pub insecure_registries: Vec<String>,
    /// `os/arch[/variant]`; default the host's.
    pub platform: Option<String>,
    /// Docker config file (`auths`); default `$DOCKER_CONFIG/config.json`, then
    /// `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// Per-registry CA certificates, `<dir>/<registry>/*.crt` (default `/etc/docker/certs.d`).
    pub certs_dir: Option<PathBuf>,
    /// Explicit credentials (user, password), used before the Docker config.
    pub credentials: Option<(String, String)>,
    /// Layers fetched at once (default 3, as Docker).
    pub max_concurrent: usize,
    /// Attempts per request on transient errors (default 3).
    pub retries: u32,
}

/// Progress events for a pull, per layer (the CLI draws `docker pull`-style lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullProgress {
    /// The manifest was resolved: its digest (the index's for a multi-platform image) and the
    /// number of layers.
    Resolved {
        reference: String,
        digest: String,
        layers: usize,
    },
    /// A layer is already in the store.
    Exists { layer: String },
    /// Bytes of a layer downloaded so far (`total` from the manifest).
    Downloading {
        layer: String,
        current: u64,
        total: u64,
    },
    /// A layer was verified and unpacked.
    Done { layer: String },
    /// A request is being retried after a transient error.
    Retry {
        what: String,
        attempt: u32,
        error: String,
    },
}

const MAX_MANIFEST: u64 = 8 << 20;
const MAX_CONFIG: u64 = 32 << 20;

#[derive(Debug, Clone)]
enum Auth {
    None,
    Basic(String),
    Bearer(String),
}

/// One registry + repository, with the auth state shared by the layer threads.
#[derive(Clone)]
pub(super) struct Client {
    pub(super) agent: ureq::Agent,
    pub(super) base: String,
    pub(super) registry: String,
    pub(super) repository: String,
    creds: Option<(String, String)>,
    auth: Arc<Mutex<Auth>>,
    retries: u32,
}

fn is_local(host: &str) -> bool {
    let h = host
        .rsplit_once(':')
        .map(|(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
        .unwrap_or(host);
    matches!(h, "localhost" | "127.0.0.1" | "[::1]" | "::1") || h.starts_with("127.")
}

/// Standard base64 (RFC 4648, padded), as Basic auth and Docker's config.json use it.
pub fn b64encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub(crate) fn b64decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => return None,
        } as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Parse `Bearer realm="…",service="…",scope="…"` / `Basic realm="…"`.
pub(crate) fn parse_challenge(h: &str) -> Option<(String, BTreeMap<String, String>)> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = BTreeMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            let mut v = String::new();
            let mut it = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = it.next() {
                match c {
                    '\\' => {
                        if let Some((_, c2)) = it.next() {
                            v.push(c2);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            (v, &q[end.min(q.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(k, v);
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme.to_ascii_lowercase(), params))
}

fn percent_encode(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// Credentials for `registry` from a Docker config's `auths`.
pub(crate) fn docker_config_credentials(
    config: &serde_json::Value,
    registry: &str,
) -> Option<(String, String)> {
    let auths = config.get("auths")?.as_object()?;
    let hub = registry == "docker.io";
    for (key, v) in auths {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let host = host.split('/').next().unwrap_or(host);
        let matches = host == registry
            || (hub
                && matches!(
                    host,
                    "index.docker.io"
                        | "docker.io"
                        | "registry-1.docker.io"
                        | "registry.hub.docker.com"
                ));
        if !matches {
            continue;
        }
        if let Some(a) = v
            .get("auth")
            .and_then(|a| a.as_str())
            .filter(|a| !a.is_empty())
        {
            let raw = String::from_utf8(b64decode(a)?).ok()?;
            let (u, p) = raw.split_once(':')?;
            return Some((u.to_string(), p.to_string()));
        }
        if let (Some(u), Some(p)) = (
            v.get("username").and_then(|x| x.as_str()),
            v.get("password").and_then(|x| x.as_str()),
        ) {
            return Some((u.to_string(), p.to_string()));
        }
    }
    None
}

fn load_credentials(opts: &PullOptions, registry: &str) -> Option<(String, String)> {
    if let Some(c) = &opts.credentials {
        return Some(c.clone());
    }
    let path = opts.docker_config.clone().or_else(|| {
        std::env::var_os("DOCKER_CONFIG")
            .map(|d| PathBuf::from(d).join("config.json"))
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
            })
    })?;
    let data = std::fs::read(path).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&data).ok()?;
    docker_config_credentials(&v, registry)
}

/// Extra CAs for a registry, Docker style: `<certs_dir>/<registry>/*.crt` (default
/// `/etc/docker/certs.d`), trusted along with the system bundle. `None`: the built-in roots.
fn registry_roots(
    opts: &PullOptions,
    registry: &str,
) -> Result<Option<ureq::tls::RootCerts>, ImageError> {
    let base = opts
        .certs_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/etc/docker/certs.d"));
    let dir = base.join(registry);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(None);
    };
    let mut pems: Vec<Vec<u8>> = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "crt") {
            pems.push(std::fs::read(&p).map_err(|source| ImageError::Io {
                context: format!("reading {}", p.display()),
                source,
            })?);
        }
    }
    if pems.is_empty() {
        return Ok(None);
    }
    for sys in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ] {
        if let Ok(b) = std::fs::read(sys) {
            pems.push(b);
            break;
        }
    }
    let mut certs = Vec::new();
    for pem in &pems {
        for item in ureq::tls::parse_pem(pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                Ok(_) => {}
                Err(e) => {
                    return Err(ImageError::Registry {
                        registry: registry.to_string(),
                        message: format!("bad certificate in {}: {e}", dir.display()),
                    })
                }
            }
        }
    }
    Ok(Some(ureq::tls::RootCerts::new_with_certs(&certs)))
}

/// Why a request failed, and whether trying again may help.
struct Failure {
    err: ImageError,
    transient: bool,
}

impl From<ImageError> for Failure {
    fn from(err: ImageError) -> Self {
        Failure {
            err,
            transient: false,
        }
    }
}

impl Client {
    pub(super) fn new(r: &Reference, opts: &PullOptions) -> Result<Client, ImageError> {
        let host = r.api_host().to_string();
        let insecure = is_local(&host)
            || opts
                .insecure_registries
                .iter()
                .any(|i| i == &host || i == &r.registry);
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(roots) = registry_roots(opts, &r.registry)? {
            tls = tls.root_certs(roots);
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(10)
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            // Like Go's ProxyFromEnvironment: never through a proxy to loopback.
            .proxy(if is_local(&host) {
                None
            } else {
                ureq::Proxy::try_from_env()
            })
            .build();
        let agent: ureq::Agent = config.into();
        // Insecure (and loopback) registries: HTTPS when it answers, else plain HTTP, as Docker
        // does (berth still verifies the certificate when HTTPS is used).
        let base = if insecure {
            let https = format!("https://{host}");
            let probe = agent
                .get(format!("{https}/v2/"))
                .config()
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .call();
            match probe {
                Ok(_) => https,
                Err(_) => format!("http://{host}"),
            }
        } else {
            format!("https://{host}")
        };
        Ok(Client {
            agent,
            base,
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            creds: load_credentials(opts, &r.registry),
            auth: Arc::new(Mutex::new(Auth::None)),
            retries: if opts.retries == 0 { 3 } else { opts.retries },
        })
    }

    pub(super) fn auth_header(&self) -> Option<String> {
        match &*self.auth.lock().unwrap_or_else(|e| e.into_inner()) {
            Auth::None => None,
            Auth::Basic(b) => Some(format!("Basic {b}")),
            Auth::Bearer(t) => Some(format!("Bearer {t}")),
        }
    }

    pub(super) fn registry_err(&self, message: String) -> ImageError {
        ImageError::Registry {
            registry: self.registry.clone(),
            message,
        }
    }

    /// Answer a 401 response's `WWW-Authenticate` challenge (see [`Client::authenticate`]).
    pub(super) fn answer_401(
        &self,
        resp: &ureq::http::Response<ureq::Body>,
    ) -> Result<(), ImageError> {
        let ch = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ImageError::Auth {
                registry: self.registry.clone(),
                message: "401 without a challenge".into(),
            })?;
        self.authenticate(ch)
    }

    /// A registry's refusal as an error, with the registry's own message read from the body:
    /// 401 and 403 are auth errors (`auth_prefix` then the status), others HTTP errors on
    /// `what`.
    pub(super) fn refusal(
        &self,
        what: &str,
        auth_prefix: &str,
        resp: ureq::http::Response<ureq::Body>,
    ) -> ImageError {
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        let _ = resp
            .into_body()
            .into_reader()
            .take(64 << 10)
            .read_to_end(&mut body);
        let message = registry_message(&body);
        match status {
            401 | 403 => ImageError::Auth {
                registry: self.registry.clone(),
                message: format!("{auth_prefix}HTTP {status}: {message}"),
            },
            _ => ImageError::Http {
                url: what.to_string(),
                status,
                message,
            },
        }
    }

    /// Answer a 401 challenge: fetch a token (bearer) or use the configured credentials (basic).
    pub(super) fn authenticate(&self, challenge: &str) -> Result<(), ImageError> {
        let auth_err = |m: String| ImageError::Auth {
            registry: self.registry.clone(),
            message: m,
        };
        let (scheme, params) = parse_challenge(challenge)
            .ok_or_else(|| auth_err(format!("unparsable challenge {challenge:?}")))?;
        match scheme.as_str() {
            "basic" => {
                let (u, p) = self.creds.clone().ok_or_else(|| {
                    auth_err(
                        "credentials required (docker login / ~/.docker/config.json auths)".into(),
                    )
                })?;
                *self.auth.lock().unwrap_or_else(|e| e.into_inner()) =
                    Auth::Basic(b64encode(format!("{u}:{p}").as_bytes()));
                Ok(())
            }
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| auth_err("bearer challenge without realm".into()))?;
                if !(realm.starts_with("https://")
                    || (realm.starts_with("http://") && self.base.starts_with("http://")))
                {
                    return Err(auth_err(format!(
                        "refusing token realm {realm} (plain HTTP for a TLS registry)"
                    )));
                }
                let scope = params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
                let mut url = format!(
                    "{realm}{}scope={}",
                    if realm.contains('?') { '&' } else { '?' },
                    percent_encode(&scope)
                );
                if let Some(s) = params.get("service") {
                    url.push_str(&format!("&service={}", percent_encode(s)));
                }
                let mut req = self.agent.get(&url);
                if let Some((u, p)) = &self.creds {
                    req = req.header(
                        "Authorization",
                        format!("Basic {}", b64encode(format!("{u}:{p}").as_bytes())),
                    );
                }
                let resp = req
                    .call()
                    .map_err(|e| auth_err(format!("token request to {realm}: {e}")))?;
                let status = resp.status().as_u16();
                let mut body = Vec::new();
                resp.into_body()
                    .into_reader()
                    .take(1 << 20)
                    .read_to_end(&mut body)
                    .map_err(|e| auth_err(format!("token response: {e}")))?;
                if status != 200 {
                    return Err(auth_err(format!(
                        "token server {realm} answered HTTP {status}: {}",
                        String::from_utf8_lossy(&body).trim()
                    )));
                }
                let v: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| auth_err(format!("token response: {e}")))?;
                let tok = v
                    .get("token")
                    .or_else(|| v.get("access_token"))
                    .and_then(|t| t.as_str())
                    .filter(|t| !t.is_empty());
                let tok = tok.ok_or_else(|| auth_err("token response without a token".into()))?;
                *self.auth.lock().unwrap_or_else(|e| e.into_inner()) =
                    Auth::Bearer(tok.to_string());
                Ok(())
            }
            other => Err(auth_err(format!("unsupported auth scheme {other}"))),
        }
    }

    /// GET `/v2/<repo>/<path>`: authenticates on 401 once, maps errors; the body is the caller's.
    fn get_once(
        &self,
        path: &str,
        accept: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, Failure> {
        let url = format!("{}/v2/{}/{}", self.base, self.repository, path);
        let mut tried_auth = false;
        loop {
            let mut req = self.agent.get(&url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(h) = self.auth_header() {
                req = req.header("Authorization", h);
            }
            let resp = match req.call() {
                Ok(r) => r,
                Err(e) => {
                    let transient = !matches!(e, ureq::Error::BadUri(_) | ureq::Error::Http(_));
                    return Err(Failure {
                        err: self.registry_err(format!("GET {url}: {e}")),
                        transient,
                    });
                }
            };
            let status = resp.status().as_u16();
            if status == 401 && !tried_auth {
                tried_auth = true;
                self.answer_401(&resp)?;
                continue;
            }
            if (200..300).contains(&status) {
                return Ok(resp);
            }
            return Err(Failure {
                err: self.refusal(&url, "", resp),
                transient: status == 429 || status >= 500,
            });
        }
    }

    fn with_retries<T>(
        &self,
        what: &str,
        progress: &dyn Fn(PullProgress),
        mut f: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, ImageError> {
        let mut attempt = 1;
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(Failure {
                    err,
                    transient: true,
                }) if attempt < self.retries => {
                    progress(PullProgress::Retry {
                        what: what.to_string(),
                        attempt,
                        error: err.to_string(),
                    });
                    std::thread::sleep(Duration::from_millis(250 << attempt.min(4)));
                    attempt += 1;
                }
                Err(f) => return Err(f.err),
            }
        }
    }

    /// Fetch a manifest (by tag or digest) and verify its digest. Returns (digest, content type, bytes).
    fn manifest(
        &self,
        what: &str,
        progress: &dyn Fn(PullProgress),
    ) -> Result<(String, String, Vec<u8>), ImageError> {
        self.with_retries(&format!("manifest {what}"), progress, || {
            let resp = self
                .get_once(&format!("manifests/{what}"), Some(ACCEPT))
                .map_err(|mut f| {
                    if let ImageError::Http { status: 404, .. } = f.err {
                        f.err = ImageError::NotFound(format!(
                            "{}/{}:{what} (manifest unknown)",
                            self.registry, self.repository
                        ));
                    }
                    f
                })?;
            let ctype = header(&resp, "content-type").unwrap_or_default();
            let header_digest = header(&resp, "docker-content-digest");
            let mut body = Vec::new();
            resp.into_body()
                .into_reader()
                .take(MAX_MANIFEST + 1)
                .read_to_end(&mut body)
                .map_err(|e| Failure {
                    err: self.registry_err(format!("reading manifest {what}: {e}")),
                    transient: true,
                })?;
            if body.len() as u64 > MAX_MANIFEST {
                return Err(self
                    .registry_err(format!(
                        "manifest {what} is larger than {MAX_MANIFEST} bytes"
                    ))
                    .into());
            }
            let digest = sha256_hex(&body);
            let expected = if what.contains(':') {
                Some(what.to_string())
            } else {
                header_digest.filter(|d| d.starts_with("sha256:"))
            };
            if let Some(e) = expected {
                if e != digest {
                    return Err(ImageError::DigestMismatch {
                        what: format!("manifest {what}"),
                        expected: e,
                        actual: digest,
                    }
                    .into());
                }
            }
            Ok((digest, ctype, body))
        })
    }

    fn small_blob(
        &self,
        d: &Descriptor,
        limit: u64,
        progress: &dyn Fn(PullProgress),
    ) -> Result<Vec<u8>, ImageError> {
        self.with_retries(&format!("blob {}", d.digest), progress, || {
            let resp = self.get_once(&format!("blobs/{}", d.digest), None)?;
            let mut body = Vec::new();
            resp.into_body()
                .into_reader()
                .take(limit + 1)
                .read_to_end(&mut body)
                .map_err(|e| Failure {
                    err: self.registry_err(format!("reading blob {}: {e}", d.digest)),
                    transient: true,
                })?;
            if body.len() as u64 > limit {
                return Err(self
                    .registry_err(format!("blob {} is larger than {limit} bytes", d.digest))
                    .into());
            }
            let got = sha256_hex(&body);
            if got != d.digest {
                return Err(ImageError::DigestMismatch {
                    what: format!("blob {}", d.digest),
                    expected: d.digest.clone(),
                    actual: got,
                }
                .into());
            }
            Ok(body)
        })
    }
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

pub(super) fn registry_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(errs) = v.get("errors").and_then(|e| e.as_array()) {
            let msgs: Vec<String> = errs
                .iter()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e.get("code").and_then(|c| c.as_str()).unwrap_or("ERROR"),
                        e.get("message").and_then(|c| c.as_str()).unwrap_or("")
                    )
                })
                .collect();
            if !msgs.is_empty() {
                return msgs.join("; ");
            }
        }
    }
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    if s.is_empty() {
        "no details".into()
    } else {
        s.chars().take(300).collect()
    }
}

fn parse_platform(p: &str) -> Result<(String, String, Option<String>), ImageError> {
    let parts: Vec<&str> = p.split('/').collect();
    match parts.as_slice() {
        [os, arch] => Ok((os.to_string(), arch.to_string(), None)),
        [os, arch, v] => Ok((os.to_string(), arch.to_string(), Some(v.to_string()))),
        _ => Err(ImageError::Unsupported {
            what: "platform",
            value: p.to_string(),
        }),
    }
}

/// Counts bytes and reports progress at most every 100 ms.
struct ProgressReader<R> {
    inner: R,
    layer: String,
    total: u64,
    current: u64,
    last: Instant,
    tx: mpsc::Sender<PullProgress>,
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.current += n as u64;
        if self.last.elapsed() >= Duration::from_millis(100) || (n == 0 && self.current > 0) {
            self.last = Instant::now();
            let _ = self.tx.send(PullProgress::Downloading {
                layer: self.layer.clone(),
                current: self.current,
                total: self.total,
            });
        }
        Ok(n)
    }
}

pub(super) fn pull(
    store: &ImageStore,
    reference: &str,
    opts: &PullOptions,
    progress: &mut dyn FnMut(PullProgress),
) -> Result<Image, ImageError> {
    let r = Reference::parse(reference)?;
    let client = Client::new(&r, opts)?;
    let (os, arch, variant) = match &opts.platform {
        Some(p) => parse_platform(p)?,
        None => host_platform(),
    };
    let _w = store.writer_lock()?;

    // Events from worker threads are funnelled to the caller's callback on this thread.
    let (tx, rx) = mpsc::channel::<PullProgress>();
    let report = {
        let tx = tx.clone();
        move |p: PullProgress| {
            let _ = tx.send(p);
        }
    };
    let drain = |progress: &mut dyn FnMut(PullProgress)| {
        while let Ok(p) = rx.try_recv() {
            progress(p);
        }
    };

    let what = r
        .digest
        .clone()
        .or_else(|| r.tag.clone())
        .unwrap_or_else(|| "latest".into());
    let (top_digest, ctype, raw) = client.manifest(&what, &report)?;
    drain(progress);
    let top = AnyManifest::parse(&raw, &format!("manifest {}", r))?;
    let mut index: Option<(String, Vec<u8>)> = None;
    let (mdigest, mraw, manifest) = if top.is_index(&ctype) {
        let d = choose_platform(&top, &os, &arch, variant.as_deref()).ok_or_else(|| {
            ImageError::NoPlatform {
                reference: r.to_string(),
                platform: match &variant {
                    Some(v) => format!("{os}/{arch}/{v}"),
                    None => format!("{os}/{arch}"),
                },
                available: platforms(&top),
            }
        })?;
        let (md, _, mraw) = client.manifest(&d.digest, &report)?;
        let m = AnyManifest::parse(&mraw, &format!("manifest {md}"))?;
        if m.is_index("") {
            return Err(ImageError::Unsupported {
                what: "nested index in",
                value: r.to_string(),
            });
        }
        index = Some((top_digest.clone(), raw));
        (md, mraw, m)
    } else {
        (top_digest.clone(), raw, top)
    };
    let cfg_desc = manifest
        .config
        .clone()
        .ok_or_else(|| ImageError::Unsupported {
            what: "manifest without config",
            value: mdigest.clone(),
        })?;
    for l in &manifest.layers {
        if l.media_type.contains("encrypted") {
            return Err(ImageError::Unsupported {
                what: "layer media type",
                value: l.media_type.clone(),
            });
        }
    }
    progress(PullProgress::Resolved {
        reference: r.to_string(),
        digest: top_digest.clone(),
        layers: manifest.layers.len(),
    });
    let cfg = client.small_blob(&cfg_desc, MAX_CONFIG, &report)?;
    drain(progress);
    let config: oci_spec::image::ImageConfiguration =
        serde_json::from_slice(&cfg).map_err(|source| ImageError::Json {
            what: format!("image config {}", cfg_desc.digest),
            source,
        })?;
    let diff_ids: Vec<String> = config.rootfs().diff_ids().to_vec();
    if diff_ids.len() != manifest.layers.len() {
        return Err(ImageError::Unsupported {
            what: "image",
            value: format!(
                "config lists {} layers, manifest {}",
                diff_ids.len(),
                manifest.layers.len()
            ),
        });
    }

    drop(report); // its sender must not keep the progress channel open below
                  // Layers: skip the ones we have, fetch the rest with a small pool of threads.
    let mut todo: Vec<(Descriptor, String)> = Vec::new();
    for (l, d) in manifest.layers.iter().zip(&diff_ids) {
        super::reference::validate_digest(&l.digest)?;
        if store.has_layer(d) || todo.iter().any(|(_, x)| x == d) {
            progress(PullProgress::Exists {
                layer: l.digest.clone(),
            });
        } else {
            todo.push((l.clone(), d.clone()));
        }
    }
    let sizes: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());
    let queue = Mutex::new(todo.into_iter());
    let first_err: Mutex<Option<ImageError>> = Mutex::new(None);
    let workers = if opts.max_concurrent == 0 {
        3
    } else {
        opts.max_concurrent
    };
    std::thread::scope(|s| {
        for _ in 0..workers {
            let (client, tx, queue, sizes, first_err) =
                (client.clone(), tx.clone(), &queue, &sizes, &first_err);
            s.spawn(move || loop {
                if first_err
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_some()
                {
                    return;
                }
                let Some((desc, diff)) = queue.lock().unwrap_or_else(|e| e.into_inner()).next()
                else {
                    return;
                };
                let report = |p| {
                    let _ = tx.send(p);
                };
                let r = client.with_retries(&format!("layer {}", desc.digest), &report, || {
                    let resp = client.get_once(&format!("blobs/{}", desc.digest), None)?;
                    let reader = ProgressReader {
                        inner: resp.into_body().into_reader(),
                        layer: desc.digest.clone(),
                        total: desc.size,
                        current: 0,
                        last: Instant::now(),
                        tx: tx.clone(),
                    };
                    store
                        .unpack_layer(reader, Some(&desc.digest), &diff)
                        .map_err(|err| {
                            // A broken connection is worth another try; bad content is not.
                            let transient = matches!(err, ImageError::Io { .. });
                            Failure { err, transient }
                        })
                });
                match r {
                    Ok(u) => {
                        sizes
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((diff.clone(), u.size));
                        let _ = tx.send(PullProgress::Done {
                            layer: desc.digest.clone(),
                        });
                    }
                    Err(e) => {
                        first_err
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                }
            });
        }
        drop(tx);
        // Relay progress until every worker is done (the channel closes with the last sender).
        while let Ok(p) = rx.recv() {
            progress(p);
        }
    });
    if let Some(e) = first_err.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    store.put_blob(&cfg_desc.digest, &cfg)?;
    store.put_blob(&mdigest, &mraw)?;
    if let Some((d, raw)) = &index {
        store.put_blob(d, raw)?;
    }
    let rec = ImageRecord {
        id: cfg_desc.digest.clone(),
        manifest: Some(mdigest),
        index: index.map(|i| i.0),
        repo_tags: r.tagged().into_iter().collect(),
        repo_digests: vec![r.with_digest(&top_digest)],
        layers: diff_ids,
        size: 0,
        created: config.created().clone(),
        added: 0,
    };
    let sizes = sizes.into_inner().unwrap_or_else(|e| e.into_inner());
    store.add_record(rec, &sizes)?;
    store
        .get(&r.to_string())?
        .ok_or_else(|| ImageError::NotFound(r.to_string()))
        .map(|mut i| {
            i.reference = r.to_string();
            i
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_roundtrip() {
        for s in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            "user:pa:ss",
        ] {
            assert_eq!(b64decode(&b64encode(s.as_bytes())).unwrap(), s.as_bytes());
        }
        assert_eq!(b64encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64encode(b"fo"), "Zm8=");
        assert!(b64decode("a$b").is_none());
    }

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/redis:pull""#).unwrap();
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/redis:pull");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(
            (s.as_str(), p["realm"].as_str()),
            ("basic", "Registry Realm")
        );
        let (_, p) = parse_challenge(r#"Bearer realm=http://x/t, service=svc"#).unwrap();
        assert_eq!(
            (p["realm"].as_str(), p["service"].as_str()),
            ("http://x/t", "svc")
        );
    }

    #[test]
    fn docker_config_auths() {
        let v: serde_json::Value = serde_json::json!({"auths": {
            "https://index.docker.io/v1/": {"auth": b64encode(b"hubuser:hubpass")},
            "localhost:5000": {"auth": b64encode(b"u:p:w")},
            "example.com": {"username": "a", "password": "b"}
        }});
        assert_eq!(
            docker_config_credentials(&v, "docker.io"),
            Some(("hubuser".into(), "hubpass".into()))
        );
        assert_eq!(
            docker_config_credentials(&v, "localhost:5000"),
            Some(("u".into(), "p:w".into()))
        );
        assert_eq!(
            docker_config_credentials(&v, "example.com"),
            Some(("a".into(), "b".into()))
        );
        assert_eq!(docker_config_credentials(&v, "ghcr.io"), None);
    }

    #[test]
    fn local_hosts_are_plain_http() {
        assert!(is_local("localhost:5000") && is_local("127.0.0.1:41234") && is_local("localhost"));
        assert!(!is_local("registry-1.docker.io") && !is_local("example.com:5000"));
    }
}
