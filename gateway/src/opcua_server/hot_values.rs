//! Values the gateway sets many times a second in the address space (the
//! prediction outputs; tag values live in `tag_nodes`), kept in slots
//! beside it.
//!
//! Setting a value in async-opcua's address space finds its node by NodeId
//! twice (the node, then its monitored items); with string NodeIds that was
//! about a tenth of the gateway's CPU at 100 ms polls (BENCHMARKS.md §15).
//! So a value lands in its slot (an index, no lookup) and reaches the
//! address space only when someone looks:
//!
//! - a node with a Value monitored item is set in the address space at once,
//!   so subscribers are notified as before;
//! - any other node's newest value waits in its slot; a Read, or a new
//!   monitored item, first moves the waiting values of the nodes it asks
//!   for into the address space ([`HotValues::flush`]).
//!
//! Locks: nothing takes the address space's lock while it holds a group's
//! mutex (`store` returns before its caller sets the direct values), and
//! `flush` takes a group's mutex inside the address space's write lock. So
//! there is one lock order, and a value taken from a slot cannot land after
//! a newer one set directly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use opcua::server::address_space::{AddressSpace, NodeType};
use opcua::sync::RwLock;
use opcua::types::{DataValue, NodeId};

/// The slots of the nodes one publisher sets together (one machine's
/// outputs of one model), in a fixed order.
pub(crate) struct HotGroup {
    nodes: Vec<NodeId>,
    slots: Mutex<Vec<Slot>>,
}

#[derive(Default)]
struct Slot {
    /// Value monitored items on the node now.
    watchers: u32,
    /// The newest value not yet in the address space.
    pending: Option<DataValue>,
}

impl HotGroup {
    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        // Slots hold plain values; a panic elsewhere cannot leave them
        // half-written.
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores `(slot, value)` pairs. A watched node's value is appended to
    /// `direct` instead: the caller sets those in the address space (which
    /// notifies the subscribers) after this returns.
    pub(crate) fn store<'a>(
        &'a self,
        values: impl IntoIterator<Item = (usize, DataValue)>,
        direct: &mut Vec<(&'a NodeId, DataValue)>,
    ) {
        let mut slots = self.lock();
        for (i, value) in values {
            let (Some(slot), Some(node)) = (slots.get_mut(i), self.nodes.get(i)) else {
                continue;
            };
            if slot.watchers > 0 {
                // An older waiting value must not land after this one.
                slot.pending = None;
                direct.push((node, value));
            } else {
                slot.pending = Some(value);
            }
        }
    }
}

/// Every group, and which slot each hot node is.
#[derive(Default)]
pub(crate) struct HotValues {
    groups: Vec<Arc<HotGroup>>,
    by_node: HashMap<NodeId, (usize, usize)>,
}

impl HotValues {
    /// A group of `nodes` (slot `i` is `nodes[i]`). Every node must be a
    /// variable in the address space and in one group only.
    pub(crate) fn add_group(&mut self, nodes: Vec<NodeId>) -> Arc<HotGroup> {
        let g = self.groups.len();
        for (i, node) in nodes.iter().enumerate() {
            self.by_node.insert(node.clone(), (g, i));
        }
        let slots = nodes.iter().map(|_| Slot::default()).collect();
        let group = Arc::new(HotGroup {
            nodes,
            slots: Mutex::new(slots),
        });
        self.groups.push(group.clone());
        group
    }

    fn slot_of(&self, node: &NodeId) -> Option<(&HotGroup, usize)> {
        let &(g, i) = self.by_node.get(node)?;
        Some((self.groups.get(g)?, i))
    }

    /// A Value monitored item was made on `node`: from now on its values
    /// go to the address space at once. Call [`Self::flush`] after this,
    /// before the item's first value is read. (A count left too high, say
    /// by an item the library refuses after this, only costs the direct
    /// path; one too low would starve a subscriber, so nothing else lowers
    /// it than [`Self::unwatch`].)
    pub(crate) fn watch(&self, node: &NodeId) {
        if let Some((group, i)) = self.slot_of(node) {
            if let Some(slot) = group.lock().get_mut(i) {
                slot.watchers += 1;
            }
        }
    }

    /// A Value monitored item on `node` was deleted.
    pub(crate) fn unwatch(&self, node: &NodeId) {
        if let Some((group, i)) = self.slot_of(node) {
            if let Some(slot) = group.lock().get_mut(i) {
                slot.watchers = slot.watchers.saturating_sub(1);
            }
        }
    }

    /// Moves the waiting values of `nodes` (those that are hot) into the
    /// address space. Takes its write lock only when one of them is hot.
    pub(crate) fn flush<'a>(
        &self,
        address_space: &RwLock<AddressSpace>,
        nodes: impl IntoIterator<Item = &'a NodeId>,
    ) {
        let hot: Vec<_> = nodes
            .into_iter()
            .filter_map(|node| Some((node, self.slot_of(node)?)))
            .collect();
        if hot.is_empty() {
            return;
        }
        let mut space = address_space.write();
        for (node, (group, i)) in hot {
            let Some(value) = group.lock().get_mut(i).and_then(|s| s.pending.take()) else {
                continue;
            };
            if let Some(NodeType::Variable(variable)) = space.find_mut(node) {
                variable.set_data_value(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::server::address_space::VariableBuilder;
    use opcua::types::{DataTypeId, StatusCode, Variant};

    fn space_with(nodes: &[NodeId]) -> RwLock<AddressSpace> {
        let mut space = AddressSpace::new();
        space.add_namespace("urn:test", 1);
        for node in nodes {
            VariableBuilder::new(node, "v", "v")
                .data_type(DataTypeId::Double)
                .value(Variant::Empty)
                .insert(&mut space);
        }
        RwLock::new(space)
    }

    fn value_in(space: &RwLock<AddressSpace>, node: &NodeId) -> Option<Variant> {
        match space.read().find(node) {
            Some(NodeType::Variable(v)) => {
                v.value(
                    opcua::types::TimestampsToReturn::Neither,
                    &opcua::types::NumericRange::None,
                    &opcua::types::DataEncoding::Binary,
                    0.0,
                )
                .value
            }
            _ => None,
        }
    }

    fn good(v: f64) -> DataValue {
        DataValue {
            value: Some(Variant::Double(v)),
            status: Some(StatusCode::Good),
            ..DataValue::null()
        }
    }

    #[test]
    fn unwatched_values_wait_until_flushed() {
        let nodes = vec![NodeId::new(1, "a"), NodeId::new(1, "b")];
        let space = space_with(&nodes);
        let mut hot = HotValues::default();
        let group = hot.add_group(nodes.clone());

        let mut direct = Vec::new();
        group.store([(0, good(1.0)), (1, good(2.0))], &mut direct);
        group.store([(0, good(3.0))], &mut direct);
        assert!(direct.is_empty());
        assert_eq!(value_in(&space, &nodes[0]), Some(Variant::Empty));

        // Only the asked-for node moves; the newest value wins.
        hot.flush(&space, [&nodes[0]]);
        assert_eq!(value_in(&space, &nodes[0]), Some(Variant::Double(3.0)));
        assert_eq!(value_in(&space, &nodes[1]), Some(Variant::Empty));
        hot.flush(&space, &nodes);
        assert_eq!(value_in(&space, &nodes[1]), Some(Variant::Double(2.0)));
    }

    #[test]
    fn watched_values_go_direct_and_drop_an_older_waiting_one() {
        let nodes = vec![NodeId::new(1, "a")];
        let space = space_with(&nodes);
        let mut hot = HotValues::default();
        let group = hot.add_group(nodes.clone());

        let mut direct = Vec::new();
        group.store([(0, good(1.0))], &mut direct);
        hot.watch(&nodes[0]);
        group.store([(0, good(2.0))], &mut direct);
        assert_eq!(direct.len(), 1);
        // The caller sets 2.0 directly; a later flush must not bring back 1.0.
        if let Some(NodeType::Variable(v)) = space.write().find_mut(&nodes[0]) {
            v.set_data_value(good(2.0));
        }
        hot.flush(&space, &nodes);
        assert_eq!(value_in(&space, &nodes[0]), Some(Variant::Double(2.0)));

        hot.unwatch(&nodes[0]);
        direct.clear();
        group.store([(0, good(4.0))], &mut direct);
        assert!(direct.is_empty());
        hot.flush(&space, &nodes);
        assert_eq!(value_in(&space, &nodes[0]), Some(Variant::Double(4.0)));
    }

    #[test]
    fn nodes_that_are_not_hot_are_left_alone() {
        let nodes = vec![NodeId::new(1, "a"), NodeId::new(1, "cold")];
        let space = space_with(&nodes);
        let mut hot = HotValues::default();
        hot.add_group(vec![nodes[0].clone()]);
        hot.watch(&nodes[1]);
        hot.unwatch(&nodes[1]);
        hot.flush(&space, [&nodes[1]]);
        assert_eq!(value_in(&space, &nodes[1]), Some(Variant::Empty));
    }
}
