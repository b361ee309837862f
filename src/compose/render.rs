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

fn escape_dollars(n: &mut Node) {
    match &mut n.v {
        V::Scalar(s, false) if s.contains('$') => *s = s.replace('$', "$$"),
        V::Seq(items) => items.iter_mut().for_each(escape_dollars),
        V::Map(entries) => entries.iter_mut().for_each(|e| escape_dollars(&mut e.val)),
        _ => {}
    }
}
