//! A user's bindings to logic nodes and how bind modes change them (ioGame's set semantics).
//! Pure: no IO.

use std::sync::Arc;

use mesh::NodeId;
use proto::logic::v1::BindMode;

/// One binding: a node, and the routes it served when bound (so a request can still tell that
/// a node which has since vanished was the one serving a route).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Binding {
    pub(crate) node: NodeId,
    pub(crate) routes: Arc<[u32]>,
}

impl Binding {
    pub(crate) fn served(&self, route: u32) -> bool {
        self.routes.binary_search(&route).is_ok()
    }
}

/// Applies a bind change to `current`, keeping bind order (the order requests consult them).
/// - Cover: the bindings become `nodes`.
/// - Append: `nodes` not yet bound are added after the existing ones.
/// - Remove: bindings to `nodes` are removed.
/// - Clear: every binding is removed.
pub(crate) fn apply(current: &mut Vec<Binding>, mode: BindMode, nodes: Vec<Binding>) {
    match mode {
        BindMode::Cover => {
            current.clear();
            append(current, nodes);
        }
        BindMode::Append => append(current, nodes),
        BindMode::Remove => current.retain(|b| !nodes.iter().any(|n| n.node == b.node)),
        BindMode::Clear | BindMode::Unspecified => current.clear(),
    }
}

fn append(current: &mut Vec<Binding>, nodes: Vec<Binding>) {
    for node in nodes {
        if !current.iter().any(|b| b.node == node.node) {
            current.push(node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bindings(ids: &[&str]) -> Vec<Binding> {
        ids.iter()
            .map(|id| Binding {
                node: NodeId::new(*id),
                routes: Arc::from(vec![]),
            })
            .collect()
    }

    fn check(before: &[&str], mode: BindMode, nodes: &[&str], after: &[&str]) {
        let mut current = bindings(before);
        apply(&mut current, mode, bindings(nodes));
        let got: Vec<&str> = current.iter().map(|b| b.node.as_str()).collect();
        assert_eq!(got, after, "{before:?} {mode:?} {nodes:?}");
    }

    /// The rows of ioGame's binding documentation, and the edges around them.
    #[test]
    fn bind_modes_follow_iogames_set_semantics() {
        use BindMode::*;
        check(&["1-1"], Append, &["2-2", "3-1"], &["1-1", "2-2", "3-1"]);
        check(&["1-1"], Cover, &["2-2", "3-1"], &["2-2", "3-1"]);
        check(&[], Cover, &["2-2", "3-1"], &["2-2", "3-1"]);
        check(&["1-1", "2-2", "3-1"], Remove, &["2-2", "3-1"], &["1-1"]);
        check(&["1-1", "2-2", "3-1"], Clear, &[], &[]);
        check(&["1-1"], Append, &["1-1", "2-2"], &["1-1", "2-2"]);
        check(&["1-1"], Cover, &["2-2", "2-2"], &["2-2"]);
        check(&["1-1"], Remove, &["9-9"], &["1-1"]);
        check(&[], Clear, &[], &[]);
    }
}
