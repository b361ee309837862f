//! Image references, normalised the way Docker's `distribution/reference` does it:
//! `redis` → `docker.io/library/redis:latest`, `localhost:5000/app:tag`, `ghcr.io/o/a@sha256:…`.

use std::fmt;

pub const DEFAULT_REGISTRY: &str = "docker.io";
pub const DEFAULT_TAG: &str = "latest";
const MAX_NAME: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference format: empty reference")]
    Empty,
    #[error("invalid reference format: repository name ({0:?}) must be lowercase")]
    Uppercase(String),
    #[error("invalid reference format: {reference:?}: {why}")]
    Invalid {
        reference: String,
        why: &'static str,
    },
    #[error(
        "invalid reference format: repository name ({0:?}) must not be more than 255 characters"
    )]
    TooLong(String),
    #[error("invalid digest {0:?}: expected sha256:<64 hex> (or sha384/sha512)")]
    Digest(String),
}

/// A fully qualified reference: registry, repository path, and a tag or a digest (or both).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `docker.io`, `ghcr.io`, `localhost:5000`.
    pub registry: String,
    /// `library/redis`, `org/app`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
}

impl Reference {
    /// Parse and normalise. A missing tag becomes `latest` unless a digest is given.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let inv = |why| ReferenceError::Invalid {
            reference: s.to_string(),
            why,
        };
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(inv("contains whitespace or control characters"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                validate_digest(d)?;
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        // The tag is after the last ':' that follows the last '/' (a port has a '/' after it).
        let last_slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&name_tag[..i], Some(name_tag[i + 1..].to_string()))
            }
            None => (name_tag, None),
        };
        if let Some(t) = &tag {
            validate_tag(t).map_err(inv)?;
        }
        if name.is_empty() {
            return Err(inv("empty repository name"));
        }
        // Domain split (splitDockerDomain).
        let (registry, mut repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DEFAULT_REGISTRY.to_string()
        } else {
            registry
        };
        validate_domain(&registry).map_err(inv)?;
        if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase(repository));
        }
        for comp in repository.split('/') {
            validate_path_component(comp).map_err(inv)?;
        }
        if registry.len() + 1 + repository.len() > MAX_NAME {
            return Err(ReferenceError::TooLong(format!("{registry}/{repository}")));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `docker.io/library/redis` (no tag, no digest).
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The short form Docker prints: `redis:7`, `org/app:1`, `ghcr.io/o/a@sha256:…`.
    pub fn familiar(&self) -> String {
        let mut s = familiar_name(&self.registry, &self.repository);
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// The reference with the digest dropped (what an image record is tagged as).
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{}", self.name(), t))
    }

    /// `name@digest`.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{}", self.name(), digest)
    }

    /// The host to talk to: Docker Hub's API host for docker.io.
    pub fn api_host(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }
}

/// `docker.io/library/x` → `x`, `docker.io/o/x` → `o/x`, others unchanged.
pub fn familiar_name(registry: &str, repository: &str) -> String {
    if registry == DEFAULT_REGISTRY {
        repository
            .strip_prefix("library/")
            .unwrap_or(repository)
            .to_string()
    } else {
        format!("{registry}/{repository}")
    }
}

/// Shorten a stored full reference (`docker.io/library/redis:7`) to `redis:7`.
pub fn familiar(full: &str) -> String {
    Reference::parse(full)
        .map(|r| r.familiar())
        .unwrap_or_else(|_| full.to_string())
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

pub fn validate_digest(d: &str) -> Result<(), ReferenceError> {
    let bad = || ReferenceError::Digest(d.to_string());
    let (alg, hex) = d.split_once(':').ok_or_else(bad)?;
    let len = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(bad()),
    };
    if hex.len() != len || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad());
    }
    Ok(())
}

fn validate_tag(t: &str) -> Result<(), &'static str> {
    let b = t.as_bytes();
    if b.is_empty() || b.len() > 128 {
        return Err("tag must be 1 to 128 characters");
    }
    if !(b[0].is_ascii_alphanumeric() || b[0] == b'_') {
        return Err("tag must start with a letter, digit or underscore");
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
    {
        return Err("tag may contain only letters, digits, '_', '.' and '-'");
    }
    Ok(())
}

fn validate_domain(d: &str) -> Result<(), &'static str> {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || d.starts_with('[') => (h, Some(p)),
        _ => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) {
            return Err("registry port must be a number");
        }
    }
    if host.starts_with('[') && host.ends_with(']') {
        return Ok(());
    }
    if host.is_empty() {
        return Err("empty registry host");
    }
    for label in host.split('.') {
        let b = label.as_bytes();
        if b.is_empty()
            || !b[0].is_ascii_alphanumeric()
            || !b[b.len() - 1].is_ascii_alphanumeric()
            || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        {
            return Err("invalid registry host name");
        }
    }
    Ok(())
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn validate_path_component(c: &str) -> Result<(), &'static str> {
    let b = c.as_bytes();
    const MSG: &str = "repository path components are lowercase letters and digits separated by '.', '_', '__' or '-'";
    if b.is_empty() {
        return Err("empty repository path component");
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(MSG);
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return Err(MSG);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn docker_normalisation() {
        assert_eq!(p("redis"), "docker.io/library/redis:latest");
        assert_eq!(p("redis:7"), "docker.io/library/redis:7");
        assert_eq!(p("library/redis"), "docker.io/library/redis:latest");
        assert_eq!(p("docker.io/library/redis:7"), "docker.io/library/redis:7");
        assert_eq!(p("index.docker.io/redis"), "docker.io/library/redis:latest");
        assert_eq!(p("org/app"), "docker.io/org/app:latest");
        assert_eq!(p("localhost:5000/app:tag"), "localhost:5000/app:tag");
        assert_eq!(p("localhost/app"), "localhost/app:latest");
        assert_eq!(
            p("ghcr.io/org/sub/app:v1.2_3-x"),
            "ghcr.io/org/sub/app:v1.2_3-x"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            p(&format!("ghcr.io/org/app@{d}")),
            format!("ghcr.io/org/app@{d}")
        );
        assert_eq!(
            p(&format!("redis:7@{d}")),
            format!("docker.io/library/redis:7@{d}")
        );
        assert_eq!(p("a__b-c---e/f.g_h:1"), "docker.io/a__b-c---e/f.g_h:1");
    }

    #[test]
    fn familiar_forms() {
        assert_eq!(familiar("docker.io/library/redis:7"), "redis:7");
        assert_eq!(familiar("docker.io/org/app:1"), "org/app:1");
        assert_eq!(familiar("localhost:5000/app:1"), "localhost:5000/app:1");
        assert_eq!(
            Reference::parse("redis").unwrap().api_host(),
            "registry-1.docker.io"
        );
    }

    #[test]
    fn errors() {
        assert_eq!(Reference::parse(""), Err(ReferenceError::Empty));
        assert!(matches!(
            Reference::parse("Redis"),
            Err(ReferenceError::Uppercase(_))
        ));
        assert!(matches!(
            Reference::parse("org/Redis"),
            Err(ReferenceError::Uppercase(_))
        ));
        for bad in [
            "redis:",
            "redis:-x",
            "redis::7",
            "re dis",
            "/redis",
            "redis/",
            "a//b",
            "a/-b",
            "a/b_",
            "a/b...c",
            "redis@sha256:abc",
            "redis@md5:aa",
            "host:port/x",
            ":7",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad} should be rejected");
        }
        let long = format!("{}/x", "a".repeat(300));
        assert!(matches!(
            Reference::parse(&long),
            Err(ReferenceError::TooLong(_))
        ));
        // Uppercase first component is taken as a domain (as Docker does), valid host.
        assert_eq!(p("Example.com/app"), "Example.com/app:latest");
    }
}
