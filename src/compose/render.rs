//! `config` output: the model in the shape of `docker compose config` (YAML or JSON).

use std::sync::Arc;

use super::model::Project;
use super::yaml::{self, Entry, Node, V};

/// Render like `docker compose config`. With `escape`, every `$` in a value is written `$$`,
/// so that the output loads back to the same project (`config` of `config` is identical).
pub fn render(p: &Project, json: bool, escape: bool) -> Result<String, String> {
    // serde_json keeps the struct field order; re-read it as an ordered tree.
    let text = serde_json::to_string(p).map_err(|e| e.to_string())?;
    let mut node = yaml::parse(&text, &Arc::from("<json>"))
        .map_err(|e| e.to_string())?
        .ok_or("empty output")?;
    if escape {
        escape_dollars(&mut node);
    }
    // Go maps are printed sorted: bytewise by encoding/json, "naturally" by go-yaml.
    sort_maps(&mut node, &mut Vec::new(), json);
    Ok(if json {
        json_shape(&mut node);
        // No trailing newline, like docker compose.
        yaml::emit_json(&node)
    } else {
        yaml::emit(&node)
    })
}

/// Go's encoding/json prints a few fields YAML omits: `command`/`entrypoint` (null when
/// unset), a network's `ipam`, a deploy's `resources` and `placement` (empty objects).
fn json_shape(root: &mut Node) {
    let m = root.mark.clone();
    if let Some(V::Map(svcs)) = root.get_mut("services").map(|n| &mut n.v) {
        for e in svcs {
            for k in ["command", "entrypoint"] {
                if e.val.get(k).is_none() {
                    // At its place in compose's (alphabetical after `profiles`) field order.
                    if let Some(entries) = e.val.as_map_mut() {
                        let pos = entries
                            .iter()
                            .position(|x| x.key != "profiles" && x.key.as_str() > k)
                            .unwrap_or(entries.len());
                        entries.insert(
                            pos,
                            Entry {
                                key: k.to_string(),
                                kmark: m.clone(),
                                val: Node::new(V::Null, m.clone()),
                            },
                        );
                    }
                }
            }
            if let Some(d) = e.val.get_mut("deploy") {
                for k in ["resources", "placement"] {
                    if d.get(k).is_none() {
                        d.set(k, Node::map(vec![], m.clone()));
                    }
                }
            }
        }
    }
    if let Some(V::Map(nets)) = root.get_mut("networks").map(|n| &mut n.v) {
        for e in nets {
            if e.val.get("ipam").is_none() {
                e.val.set("ipam", Node::map(vec![], m.clone()));
            }
        }
    }
    // The project itself is marshalled as a map: top-level keys sorted.
    if let Some(entries) = root.as_map_mut() {
        entries.sort_by(|a, b| a.key.cmp(&b.key));
    }
}

/// Paths of the model's maps (as opposed to structs, which keep their field order).
const MAPS: &[&str] = &[
    "services",
    "networks",
    "volumes",
    "secrets",
    "configs",
    "services.*.environment",
    "services.*.labels",
    "services.*.annotations",
    "services.*.depends_on",
    "services.*.networks",
    "services.*.sysctls",
    "services.*.ulimits",
    "services.*.storage_opt",
    "services.*.build.args",
    "services.*.build.labels",
    "services.*.build.additional_contexts",
    "services.*.deploy.labels",
    "services.*.logging.options",
    "services.*.networks.*.driver_opts",
    "networks.*.driver_opts",
    "networks.*.labels",
    "networks.*.ipam.options",
    "networks.*.ipam.config.*.aux_addresses",
    "volumes.*.driver_opts",
    "volumes.*.labels",
    "secrets.*.labels",
    "configs.*.labels",
];

fn is_map_path(path: &[String]) -> bool {
    MAPS.iter().any(|pat| {
        let parts: Vec<&str> = pat.split('.').collect();
        parts.len() == path.len() && parts.iter().zip(path).all(|(p, s)| *p == "*" || p == s)
    })
}

fn sort_maps(n: &mut Node, path: &mut Vec<String>, json: bool) {
    let here = is_map_path(path);
    match &mut n.v {
        V::Map(entries) => {
            if here {
                if json {
                    entries.sort_by(|a, b| a.key.cmp(&b.key));
                } else {
                    entries.sort_by(|a, b| go_yaml_key_order(&a.key, &b.key));
                }
            }
            for e in entries {
                path.push(e.key.clone());
                sort_maps(&mut e.val, path, json);
                path.pop();
            }
        }
        V::Seq(items) => {
            for it in items {
                path.push("*".into());
                sort_maps(it, path, json);
                path.pop();
            }
        }
        _ => {}
    }
}

/// go-yaml's map key order (`keyList.Less`): letters compare as runes, digit runs compare
/// by value ("svc2" < "svc10"), a letter sorts after a non-letter unless inside a number.
pub fn go_yaml_key_order(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let ar: Vec<char> = a.chars().collect();
    let br: Vec<char> = b.chars().collect();
    let less = |x: bool| if x { Ordering::Less } else { Ordering::Greater };
    let mut digits = false;
    let mut i = 0;
    while i < ar.len() && i < br.len() {
        if ar[i] == br[i] {
            digits = ar[i].is_ascii_digit();
            i += 1;
            continue;
        }
        let al = ar[i].is_alphabetic();
        let bl = br[i].is_alphabetic();
        if al && bl {
            return ar[i].cmp(&br[i]);
        }
        if al || bl {
            return less(if digits { al } else { bl });
        }
        // A zero inside a number that already has a non-zero digit: both runs start at 1, as
        // go-yaml's keyList.Less does.
        let (mut an, mut bn): (i128, i128) = (0, 0);
        if ar[i] == '0' || br[i] == '0' {
            let mut j = i;
            while j > 0 && ar[j - 1].is_ascii_digit() {
                j -= 1;
                if ar[j] != '0' {
                    an = 1;
                    bn = 1;
                    break;
                }
            }
        }
        // The digit run starting at i: its value (on top of `start`) and where it ends.
        let run = |r: &[char], start: i128| {
            let mut n = start;
            let mut k = i;
            while k < r.len() && r[k].is_ascii_digit() {
                n = n
                    .saturating_mul(10)
                    .saturating_add(r[k] as i128 - '0' as i128);
                k += 1;
            }
            (n, k)
        };
        let ((an, ai), (bn, bi)) = (run(&ar, an), run(&br, bn));
        if an != bn {
            return an.cmp(&bn);
        }
        if ai != bi {
            return ai.cmp(&bi);
        }
        return ar[i].cmp(&br[i]);
    }
    ar.len().cmp(&br.len())
}

fn escape_dollars(n: &mut Node) {
    match &mut n.v {
        V::Scalar(s, false) if s.contains('$') => *s = s.replace('$', "$$"),
        V::Seq(items) => items.iter_mut().for_each(escape_dollars),
        V::Map(entries) => entries.iter_mut().for_each(|e| escape_dollars(&mut e.val)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::go_yaml_key_order;

    #[test]
    fn go_yaml_orders_numbers_naturally() {
        // The order docker compose v2.40 prints these labels in.
        let mut v = vec![
            "svc10", "svc2", "svc1", "b", "a", "A", "a_b", "a.b", "a1", "a01", "a-b", "1", "_z",
        ];
        v.sort_by(|a, b| go_yaml_key_order(a, b));
        assert_eq!(
            v,
            ["_z", "1", "A", "a", "a-b", "a.b", "a_b", "a1", "a01", "b", "svc1", "svc2", "svc10"]
        );
    }
}
