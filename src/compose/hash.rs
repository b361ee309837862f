//! Per-service config hash, in the spirit of compose's `com.docker.compose.config-hash`:
//! sha256 of the canonical JSON of the normalised service without what does not require a
//! container to be recreated (replica count, build, pull policy, depends_on, profiles).
//! Maps are sorted by the loader, so the hash does not depend on key order in the file.

use sha2::{Digest, Sha256};

use super::model::Service;

pub fn service_hash(s: &Service) -> String {
    let mut c = s.clone();
    c.scale = None;
    c.build = None;
    c.pull_policy = None;
    c.depends_on.clear();
    c.profiles.clear();
    // Watch rules are for `berth watch`; the container does not change with them.
    c.develop = None;
    if let Some(d) = c.deploy.as_mut() {
        d.replicas = None;
    }
    // Sorting here too keeps the hash order-independent for hand-built services.
    c.environment.sort_keys();
    c.labels.sort_keys();
    c.annotations.sort_keys();
    c.sysctls.sort_keys();
    c.networks.sort_keys();
    c.ulimits.sort_keys();
    c.storage_opt.sort_keys();
    let json = serde_json::to_vec(&c).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::model::Deploy;

    #[test]
    fn hash_ignores_replicas_and_key_order() {
        let mut a = Service {
            image: Some("nginx".into()),
            ..Default::default()
        };
        a.environment.insert("A".into(), Some("1".into()));
        a.environment.insert("B".into(), Some("2".into()));
        let mut b = a.clone();
        b.environment.clear();
        b.environment.insert("B".into(), Some("2".into()));
        b.environment.insert("A".into(), Some("1".into()));
        b.scale = Some(3);
        b.deploy = Some(Deploy {
            replicas: Some(5),
            ..Default::default()
        });
        let mut a2 = a.clone();
        a2.deploy = Some(Deploy::default());
        assert_eq!(service_hash(&a2), service_hash(&b));
        assert_eq!(service_hash(&a).len(), 64);
        let mut c = a.clone();
        c.image = Some("nginx:2".into());
        assert_ne!(service_hash(&a), service_hash(&c));
    }
}
