//! The service graph: `depends_on` edges (petgraph), cycle detection with the path, start
//! levels (groups that may start in parallel) and the stop order.

use indexmap::IndexMap;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

use super::error::LoadError;
use super::model::{DependsOn, Project};

/// Edges point from a service to what it depends on.
#[derive(Debug, Clone)]
pub struct ServiceGraph {
    graph: DiGraph<String, DependsOn>,
    index: IndexMap<String, NodeIndex>,
}

impl ServiceGraph {
    /// Build the graph of the enabled services. Dependencies on services that are not in the
    /// project (optional `required: false` ones) are left out. A cycle is an error.
    pub fn new(p: &Project) -> Result<ServiceGraph, LoadError> {
        let mut graph = DiGraph::new();
        let mut index = IndexMap::new();
        for name in p.services.keys() {
            index.insert(name.clone(), graph.add_node(name.clone()));
        }
        for (name, svc) in &p.services {
            for (dep, d) in &svc.depends_on {
                if let Some(&to) = index.get(dep) {
                    graph.add_edge(index[name], to, d.clone());
                }
            }
        }
        let g = ServiceGraph { graph, index };
        if let Some(cycle) = g.find_cycle() {
            return Err(LoadError::Cycle(cycle));
        }
        Ok(g)
    }

    /// DFS in service order; the first back edge gives `a -> b -> … -> a`.
    fn find_cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum St {
            New,
            Active,
            Done,
        }
        let mut state = vec![St::New; self.graph.node_count()];
        let mut stack: Vec<NodeIndex> = Vec::new();
        fn visit(
            g: &ServiceGraph,
            n: NodeIndex,
            state: &mut [St],
            stack: &mut Vec<NodeIndex>,
        ) -> Option<Vec<String>> {
            state[n.index()] = St::Active;
            stack.push(n);
            let mut deps: Vec<NodeIndex> = g.ordered_neighbors(n, Direction::Outgoing);
            deps.dedup();
            for d in deps {
                match state[d.index()] {
                    St::Active => {
                        let pos = stack.iter().position(|x| *x == d).unwrap_or(0);
                        let mut path: Vec<String> =
                            stack[pos..].iter().map(|x| g.graph[*x].clone()).collect();
                        path.push(g.graph[d].clone());
                        return Some(path);
                    }
                    St::New => {
                        if let Some(c) = visit(g, d, state, stack) {
                            return Some(c);
                        }
                    }
                    St::Done => {}
                }
            }
            stack.pop();
            state[n.index()] = St::Done;
            None
        }
        for &n in self.index.values() {
            if state[n.index()] == St::New {
                if let Some(c) = visit(self, n, &mut state, &mut stack) {
                    return Some(c);
                }
            }
        }
        None
    }

    /// Neighbours in the order the depends_on entries were declared.
    fn ordered_neighbors(&self, n: NodeIndex, dir: Direction) -> Vec<NodeIndex> {
        let mut v: Vec<(usize, NodeIndex)> = self
            .graph
            .edges_directed(n, dir)
            .map(|e| {
                let other = if dir == Direction::Outgoing {
                    petgraph::visit::EdgeRef::target(&e)
                } else {
                    petgraph::visit::EdgeRef::source(&e)
                };
                (petgraph::visit::EdgeRef::id(&e).index(), other)
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, x)| x).collect()
    }

    /// Groups of services that can start together: each level depends only on earlier ones.
    /// Names are sorted inside a level.
    pub fn start_levels(&self) -> Vec<Vec<String>> {
        let mut level: IndexMap<NodeIndex, usize> = IndexMap::new();
        fn depth(g: &ServiceGraph, n: NodeIndex, memo: &mut IndexMap<NodeIndex, usize>) -> usize {
            if let Some(&d) = memo.get(&n) {
                return d;
            }
            let d = g
                .graph
                .neighbors_directed(n, Direction::Outgoing)
                .map(|x| depth(g, x, memo) + 1)
                .max()
                .unwrap_or(0);
            memo.insert(n, d);
            d
        }
        for &n in self.index.values() {
            depth(self, n, &mut level);
        }
        let max = level.values().copied().max();
        let Some(max) = max else {
            return vec![];
        };
        let mut out = vec![Vec::new(); max + 1];
        for (&n, &d) in &level {
            out[d].push(self.graph[n].clone());
        }
        for l in &mut out {
            l.sort();
        }
        out
    }

    /// The reverse of `start_levels`: dependents stop before what they depend on.
    pub fn stop_levels(&self) -> Vec<Vec<String>> {
        let mut v = self.start_levels();
        v.reverse();
        v
    }

    /// What `svc` depends on (only services in the project), in declaration order.
    pub fn dependencies(&self, svc: &str) -> Vec<(String, DependsOn)> {
        let Some(&n) = self.index.get(svc) else {
            return vec![];
        };
        let mut v: Vec<(usize, String, DependsOn)> = self
            .graph
            .edges_directed(n, Direction::Outgoing)
            .map(|e| {
                use petgraph::visit::EdgeRef;
                (
                    e.id().index(),
                    self.graph[e.target()].clone(),
                    e.weight().clone(),
                )
            })
            .collect();
        v.sort_by_key(|x| x.0);
        v.into_iter().map(|(_, s, d)| (s, d)).collect()
    }

    /// Services that depend on `svc` directly, sorted.
    pub fn dependents(&self, svc: &str) -> Vec<String> {
        let Some(&n) = self.index.get(svc) else {
            return vec![];
        };
        let mut v: Vec<String> = self
            .graph
            .neighbors_directed(n, Direction::Incoming)
            .map(|x| self.graph[x].clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// `svcs` plus everything they depend on, transitively (for `up SVC`).
    pub fn with_dependencies(&self, svcs: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut queue: Vec<String> = svcs.to_vec();
        while let Some(s) = queue.pop() {
            if out.contains(&s) {
                continue;
            }
            for (d, _) in self.dependencies(&s) {
                queue.push(d);
            }
            out.push(s);
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::model::Service;

    fn project(deps: &[(&str, &[&str])]) -> Project {
        let mut p = Project::default();
        for (name, ds) in deps {
            let mut s = Service {
                name: name.to_string(),
                ..Default::default()
            };
            for d in *ds {
                s.depends_on.insert(d.to_string(), DependsOn::default());
            }
            p.services.insert(name.to_string(), s);
        }
        p
    }

    #[test]
    fn levels_and_relations() {
        let p = project(&[
            ("web", &["api", "cache"]),
            ("api", &["db"]),
            ("cache", &[]),
            ("db", &[]),
            ("worker", &["db"]),
        ]);
        let g = ServiceGraph::new(&p).unwrap();
        assert_eq!(
            g.start_levels(),
            vec![
                vec!["cache".to_string(), "db".into()],
                vec!["api".into(), "worker".into()],
                vec!["web".into()]
            ]
        );
        assert_eq!(g.stop_levels()[0], vec!["web".to_string()]);
        assert_eq!(g.dependents("db"), vec!["api".to_string(), "worker".into()]);
        let deps: Vec<String> = g.dependencies("web").into_iter().map(|d| d.0).collect();
        assert_eq!(deps, vec!["api".to_string(), "cache".into()]);
        assert_eq!(
            g.with_dependencies(&["api".into()]),
            vec!["api".to_string(), "db".into()]
        );
    }

    #[test]
    fn cycles_print_their_path() {
        let p = project(&[
            ("service1", &["service2"]),
            ("service2", &["service3"]),
            ("service3", &["service1"]),
        ]);
        let e = ServiceGraph::new(&p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "dependency cycle detected: service1 -> service2 -> service3 -> service1"
        );
        let p = project(&[("service1", &["service1"])]);
        assert_eq!(
            ServiceGraph::new(&p).unwrap_err().to_string(),
            "dependency cycle detected: service1 -> service1"
        );
    }
}
