//! The machines' tag variables, `Machines/<machine>/Tags/<tag>`, served by
//! a node manager of our own rather than kept in async-opcua's in-memory
//! address space.
//!
//! Why: a variable in the address space costs ~1.9 KB of heap (its node, an
//! entry in the node map, and its two references stored both ways, each
//! with its own copy of both string NodeIds: BENCHMARKS.md §22). A gateway
//! with 10,000 tags paid ~19 MB for that alone. Here a tag is its name and
//! one slot (value, declared DataType, subscriber count); NodeIds, browse
//! results and attributes are made when a client asks.
//!
//! What a client sees is unchanged (README.md, "Contracts", "OPC UA"): the
//! `Tags` folder (still in the address space) has a HasComponent reference
//! to each tag; a tag is a BaseDataVariableType variable, read-only
//! (CurrentRead), scalar, DataType BaseDataType until its first value and
//! then that value's type. Attribute reads, writes and monitored items go
//! through async-opcua's own checks ([`read_node_value`],
//! [`validate_node_write`]) on a variable built for the request, so their
//! answers are the library's.
//!
//! Order: this manager comes before the gateway's in-memory manager, which
//! claims the whole namespace. Read and CreateMonitoredItems hand a node to
//! the first manager that owns it and has not answered it; Browse asks
//! every manager in turn, and a browse of a `Tags` folder gets the folder's
//! own references from the in-memory manager and the tags from here.
//!
//! Locks: a machine's slots are one mutex, taken for a scan's values, a
//! read, or a monitored item's start and end. Nothing else is locked while
//! it is held; subscribers are notified after it is released.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use async_trait::async_trait;
use opcua::nodes::ReferenceDirection;
use opcua::server::address_space::{
    read_node_value, validate_node_read, validate_node_write, AccessLevel, DefaultTypeTree,
    NodeType, VariableBuilder,
};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::{
    AddReferenceResult, BrowseNode, BrowsePathItem, ExternalReference, ExternalReferenceRequest,
    MonitoredItemRef, NodeManager, NodeMetadata, ParsedReadValueId, ReadNode, RequestContext,
    ServerContext, WriteNode,
};
use opcua::server::{CreateMonitoredItem, SubscriptionCache};
use opcua::types::{
    AttributeId, BrowseDescriptionResultMask, DataTypeId, DataValue, ExpandedNodeId, Identifier,
    LocalizedText, NodeClass, NodeId, QualifiedName, ReferenceDescription, ReferenceTypeId,
    StatusCode, TimestampsToReturn, VariableTypeId, Variant,
};

use super::address_space::waiting_for_initial_data;

/// Every machine's tags, and the namespace their NodeIds are in.
pub(crate) struct TagTable {
    ns: u16,
    machines: Vec<MachineTags>,
    by_machine: HashMap<String, usize>,
}

/// One machine's tag variables, in the layout's order.
pub(crate) struct MachineTags {
    name: String,
    /// Browse names; tag `i` is slot `i`.
    tags: TagNames,
    slots: Mutex<Vec<TagSlot>>,
}

/// A machine's tag names in slot order, kept once: one string with the end
/// of each name, and the slots sorted by name for lookups. About 16 bytes a
/// tag besides the names, where a box a name and a hash map of copies took
/// ~75 (BENCHMARKS.md §28).
struct TagNames {
    text: String,
    /// Where each name ends in `text`.
    ends: Vec<usize>,
    /// Every slot, in the order of its name.
    by_name: Vec<usize>,
}

impl TagNames {
    fn new(names: &[String]) -> Self {
        let mut text = String::with_capacity(names.iter().map(String::len).sum());
        let mut ends = Vec::with_capacity(names.len());
        for name in names {
            text.push_str(name);
            ends.push(text.len());
        }
        let mut tags = TagNames {
            text,
            ends,
            by_name: (0..names.len()).collect(),
        };
        let mut by_name = std::mem::take(&mut tags.by_name);
        by_name.sort_unstable_by(|&a, &b| tags.name(a).cmp(tags.name(b)));
        tags.by_name = by_name;
        tags
    }

    /// Name `i` ("" past the end, which no caller asks for).
    fn name(&self, i: usize) -> &str {
        let Some(&end) = self.ends.get(i) else {
            return "";
        };
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1],
        };
        self.text.get(start..end).unwrap_or("")
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        let k = self
            .by_name
            .binary_search_by(|&i| self.name(i).cmp(name))
            .ok()?;
        self.by_name.get(k).copied()
    }

    fn len(&self) -> usize {
        self.ends.len()
    }
}

struct TagSlot {
    /// The newest value (BadWaitingForInitialData until the first scan).
    value: DataValue,
    /// BaseDataType until a value declares the tag's type.
    data_type: DataTypeId,
    /// Value monitored items on the tag now.
    watchers: u32,
    /// The tag's NodeId, made when it is first watched (notifications need
    /// one; unwatched tags never pay for it).
    node_id: Option<Arc<NodeId>>,
}

impl Default for TagSlot {
    fn default() -> Self {
        Self {
            value: waiting_for_initial_data(),
            data_type: DataTypeId::BaseDataType,
            watchers: 0,
            node_id: None,
        }
    }
}

/// A node this manager answers for.
#[derive(Clone, Copy)]
enum TagNode<'a> {
    /// `Machines/<machine>/Tags` (owned by the in-memory manager; the
    /// references to its tags are ours).
    Folder(&'a MachineTags),
    /// `Machines/<machine>/Tags/<tag>`: the machine and the tag's slot.
    Tag(&'a MachineTags, usize),
}

/// A tag's NodeId string (the contract: the browse path below `IronBridge`).
fn tag_path(machine: &str, tag: &str) -> String {
    format!("Machines/{machine}/Tags/{tag}")
}

impl TagTable {
    /// The tags of `machines` (name, tag names in order), NodeIds in `ns`.
    /// Names must have passed `AddressSpaceLayout::validate` (no `/`, no
    /// duplicates).
    pub(crate) fn new<'a>(
        ns: u16,
        machines: impl IntoIterator<Item = (&'a str, &'a [String])>,
    ) -> Self {
        let mut table = TagTable {
            ns,
            machines: Vec::new(),
            by_machine: HashMap::new(),
        };
        for (name, tags) in machines {
            let slots = tags.iter().map(|_| TagSlot::default()).collect();
            let tags = TagNames::new(tags);
            table
                .by_machine
                .insert(name.to_string(), table.machines.len());
            table.machines.push(MachineTags {
                name: name.to_string(),
                tags,
                slots: Mutex::new(slots),
            });
        }
        table
    }

    pub(crate) fn machine(&self, name: &str) -> Option<&MachineTags> {
        self.machines.get(*self.by_machine.get(name)?)
    }

    fn locate(&self, id: &NodeId) -> Option<TagNode<'_>> {
        if id.namespace != self.ns {
            return None;
        }
        let Identifier::String(path) = &id.identifier else {
            return None;
        };
        let (machine, rest) = path.as_ref().strip_prefix("Machines/")?.split_once('/')?;
        let machine = self.machine(machine)?;
        if rest == "Tags" {
            return Some(TagNode::Folder(machine));
        }
        let i = machine.index_of(rest.strip_prefix("Tags/")?)?;
        Some(TagNode::Tag(machine, i))
    }

    fn tag_id(&self, machine: &MachineTags, i: usize) -> NodeId {
        NodeId::new(self.ns, tag_path(&machine.name, machine.tag_name(i)))
    }

    fn folder_id(&self, machine: &MachineTags) -> NodeId {
        NodeId::new(self.ns, format!("Machines/{}/Tags", machine.name))
    }

    fn browse_name(&self, machine: &MachineTags, i: usize) -> QualifiedName {
        QualifiedName::new(self.ns, machine.tag_name(i))
    }

    /// What a reference to tag `i` describes (a browse of its folder, or
    /// another manager's reference to it).
    fn metadata(&self, machine: &MachineTags, i: usize) -> NodeMetadata {
        NodeMetadata {
            node_id: self.tag_id(machine, i).into(),
            type_definition: NodeId::from(VariableTypeId::BaseDataVariableType).into(),
            browse_name: self.browse_name(machine, i),
            display_name: LocalizedText::from(machine.tag_name(i)),
            node_class: NodeClass::Variable,
        }
    }

    /// Tag `i` as an async-opcua variable, for the library's own read and
    /// write checks. Built as the address space would hold it.
    fn variable(&self, machine: &MachineTags, i: usize, slot: &TagSlot) -> Option<NodeType> {
        if i >= machine.len() {
            return None;
        }
        let name = machine.tag_name(i);
        let builder = VariableBuilder::new(
            &self.tag_id(machine, i),
            QualifiedName::new(self.ns, name),
            name,
        )
        .data_type(slot.data_type)
        .access_level(AccessLevel::CURRENT_READ)
        .user_access_level(AccessLevel::CURRENT_READ)
        .value_rank(-1);
        // `build` panics on an invalid node (a null NodeId or browse name),
        // which validated names never make; checked rather than trusted.
        if !builder.is_valid() {
            return None;
        }
        let mut variable = builder.build();
        variable.set_data_value(slot.value.clone());
        Some(NodeType::Variable(Box::new(variable)))
    }

    /// [`Self::variable`] with tag `i`'s value and DataType now.
    fn variable_now(&self, machine: &MachineTags, i: usize) -> Option<NodeType> {
        let slots = machine.lock();
        self.variable(machine, i, slots.get(i)?)
    }
}

impl MachineTags {
    /// Tag `i`'s name ("" past the end, which no caller asks for).
    fn tag_name(&self, i: usize) -> &str {
        self.tags.name(i)
    }

    /// The slot of `tag`.
    pub(crate) fn index_of(&self, tag: &str) -> Option<usize> {
        self.tags.index_of(tag)
    }

    pub(crate) fn len(&self) -> usize {
        self.tags.len()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<TagSlot>> {
        // Slots hold plain values; a panic elsewhere cannot leave them
        // half-written.
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets `(slot, value, its DataType)`; a DataType of `None` (a value
    /// that is missing) keeps the one declared. Subscribers of a changed
    /// value or DataType are notified.
    pub(crate) fn store(
        &self,
        table: &TagTable,
        updates: impl IntoIterator<Item = (usize, DataValue, Option<DataTypeId>)>,
        subscriptions: &SubscriptionCache,
    ) {
        let mut notify: Vec<(DataValue, Arc<NodeId>)> = Vec::new();
        let mut type_changes: Vec<(DataValue, NodeId)> = Vec::new();
        {
            let mut slots = self.lock();
            for (i, value, data_type) in updates {
                let Some(slot) = slots.get_mut(i) else {
                    continue;
                };
                if let Some(data_type) = data_type.filter(|t| *t != slot.data_type) {
                    slot.data_type = data_type;
                    // Rare (a tag's first value): a DataType monitored item
                    // is told without counting them.
                    type_changes.push((
                        DataValue::new_now(Variant::from(NodeId::from(data_type))),
                        table.tag_id(self, i),
                    ));
                }
                if slot.watchers > 0 {
                    if let Some(id) = &slot.node_id {
                        notify.push((value.clone(), id.clone()));
                    }
                }
                slot.value = value;
            }
        }
        if !type_changes.is_empty() {
            subscriptions.notify_data_change(
                type_changes
                    .iter()
                    .map(|(value, id)| (value.clone(), id, AttributeId::DataType)),
            );
        }
        if !notify.is_empty() {
            subscriptions.notify_data_change(
                notify
                    .iter_mut()
                    .map(|(value, id)| (std::mem::take(value), &**id, AttributeId::Value)),
            );
        }
    }
}

/// The node manager of the tag variables. Empty until the server has given
/// the namespace its index and [`TagNodes::table`] is set.
pub(crate) struct TagNodes {
    table: Arc<OnceLock<Arc<TagTable>>>,
}

/// The rest of a Tags folder's references, for BrowseNext.
struct TagBrowseContinuation {
    references: VecDeque<ReferenceDescription>,
}

impl TagNodes {
    pub(crate) fn new(table: Arc<OnceLock<Arc<TagTable>>>) -> Self {
        Self { table }
    }

    fn table(&self) -> Option<&TagTable> {
        self.table.get().map(|t| &**t)
    }

    /// Answers `read` for tag `i` of `machine`.
    fn read_tag(
        table: &TagTable,
        context: &RequestContext,
        machine: &MachineTags,
        i: usize,
        read: &ParsedRead<'_>,
    ) -> DataValue {
        let Some(node) = table.variable_now(machine, i) else {
            return DataValue {
                status: Some(StatusCode::BadNodeIdUnknown),
                ..DataValue::null()
            };
        };
        if let Err(status) = validate_node_read(&node, context, read.id) {
            return DataValue {
                status: Some(status),
                ..DataValue::null()
            };
        }
        read_node_value(&node, context, read.id, read.max_age, read.timestamps)
    }
}

struct ParsedRead<'a> {
    id: &'a ParsedReadValueId,
    max_age: f64,
    timestamps: TimestampsToReturn,
}

#[async_trait]
impl NodeManager for TagNodes {
    fn owns_node(&self, id: &NodeId) -> bool {
        matches!(
            self.table().and_then(|t| t.locate(id)),
            Some(TagNode::Tag(..))
        )
    }

    fn name(&self) -> &str {
        "ironbridge-tags"
    }

    fn namespaces_for_user(&self, _context: &RequestContext) -> Vec<NamespaceMetadata> {
        // The namespace is the in-memory manager's; this one only serves
        // some of its nodes.
        Vec::new()
    }

    async fn init(&self, _type_tree: &mut DefaultTypeTree, _context: ServerContext) {}

    async fn resolve_external_references(
        &self,
        _context: &RequestContext,
        items: &mut [&mut ExternalReferenceRequest],
    ) {
        let Some(table) = self.table() else {
            return;
        };
        for item in items {
            if let Some(TagNode::Tag(machine, i)) = table.locate(item.node_id()) {
                let mut meta = table.metadata(machine, i);
                if !item
                    .result_mask()
                    .contains(BrowseDescriptionResultMask::RESULT_MASK_TYPE_DEFINITION)
                {
                    meta.type_definition = ExpandedNodeId::null();
                }
                item.set(meta);
            }
        }
    }

    async fn browse(
        &self,
        context: &RequestContext,
        nodes_to_browse: &mut [BrowseNode],
    ) -> Result<(), StatusCode> {
        let Some(table) = self.table() else {
            return Ok(());
        };
        let type_tree = context.get_type_tree_for_user();
        for node in nodes_to_browse.iter_mut() {
            if let Some(mut point) = node.take_continuation_point::<TagBrowseContinuation>() {
                node.set_status(StatusCode::Good);
                while node.remaining() > 0 {
                    let Some(reference) = point.references.pop_front() else {
                        break;
                    };
                    // Filtered when it was first found.
                    node.add_unchecked(reference);
                }
                if !point.references.is_empty() {
                    node.set_next_continuation_point(point);
                }
                continue;
            }
            match table.locate(node.node_id()) {
                Some(TagNode::Tag(machine, _)) => {
                    node.set_status(StatusCode::Good);
                    // Both targets belong to other managers, which describe
                    // them (the library filters them after).
                    node.push_external_reference(ExternalReference::new(
                        table.folder_id(machine).into(),
                        ReferenceTypeId::HasComponent.into(),
                        ReferenceDirection::Inverse,
                    ));
                    node.push_external_reference(ExternalReference::new(
                        NodeId::from(VariableTypeId::BaseDataVariableType).into(),
                        ReferenceTypeId::HasTypeDefinition.into(),
                        ReferenceDirection::Forward,
                    ));
                }
                Some(TagNode::Folder(machine)) => {
                    node.set_status(StatusCode::Good);
                    let mut rest = VecDeque::new();
                    for i in 0..machine.len() {
                        let reference = table
                            .metadata(machine, i)
                            .into_ref_desc(true, ReferenceTypeId::HasComponent);
                        if let AddReferenceResult::Full(reference) =
                            node.add(type_tree.get(), reference)
                        {
                            rest.push_back(reference);
                        }
                    }
                    if !rest.is_empty() {
                        node.set_next_continuation_point(Box::new(TagBrowseContinuation {
                            references: rest,
                        }));
                    }
                }
                None => {}
            }
        }
        Ok(())
    }

    async fn translate_browse_paths_to_node_ids(
        &self,
        context: &RequestContext,
        nodes: &mut [&mut BrowsePathItem],
    ) -> Result<(), StatusCode> {
        let Some(table) = self.table() else {
            return Ok(());
        };
        let type_tree = context.get_type_tree_for_user();
        let type_tree = type_tree.get();
        let allows = |element: &opcua::types::RelativePathElement, ty: ReferenceTypeId| {
            let ty = NodeId::from(ty);
            element.reference_type_id.is_null()
                || element.reference_type_id == ty
                || element.include_subtypes
                    && type_tree.is_subtype_of(&ty, &element.reference_type_id)
        };
        for item in nodes.iter_mut() {
            let start = table.locate(item.node_id());
            if let Some(name) = item.unmatched_browse_name() {
                // Another manager reached one of our tags by a reference and
                // left its browse name to us.
                match start {
                    Some(TagNode::Tag(machine, i))
                        if name.is_null() || *name == table.browse_name(machine, i) =>
                    {
                        item.set_browse_name_matched(context.current_node_manager_index);
                    }
                    _ => continue,
                }
            }
            // Our nodes have few references: a folder's to its tags, a
            // tag's to its folder and type. So only the path's next step is
            // ours; the server hands what follows to the other managers.
            // (So a path that steps through a tag to its folder or type
            // again ends there: a tag has no children, and no client path
            // of the contract does that.)
            let Some(first) = item.path().first().cloned() else {
                continue;
            };
            let found: Option<(NodeId, usize, Option<QualifiedName>)> = match start {
                Some(TagNode::Folder(machine)) => {
                    let tag = (first.target_name.namespace_index == table.ns)
                        .then(|| machine.index_of(first.target_name.name.as_ref()))
                        .flatten();
                    match tag {
                        Some(i)
                            if !first.is_inverse
                                && allows(&first, ReferenceTypeId::HasComponent) =>
                        {
                            Some((table.tag_id(machine, i), 1, None))
                        }
                        _ => None,
                    }
                }
                Some(TagNode::Tag(machine, _)) => {
                    if first.is_inverse && allows(&first, ReferenceTypeId::HasComponent) {
                        Some((table.folder_id(machine), 1, Some(first.target_name.clone())))
                    } else if !first.is_inverse
                        && allows(&first, ReferenceTypeId::HasTypeDefinition)
                    {
                        Some((
                            VariableTypeId::BaseDataVariableType.into(),
                            1,
                            Some(first.target_name.clone()),
                        ))
                    } else {
                        None
                    }
                }
                None => None,
            };
            if let Some((id, depth, unmatched)) = found {
                item.add_element(id, depth, unmatched);
            }
        }
        Ok(())
    }

    async fn read(
        &self,
        context: &RequestContext,
        max_age: f64,
        timestamps_to_return: TimestampsToReturn,
        nodes_to_read: &mut [&mut ReadNode],
    ) -> Result<(), StatusCode> {
        let Some(table) = self.table() else {
            return Ok(());
        };
        for node in nodes_to_read.iter_mut() {
            let Some(TagNode::Tag(machine, i)) = table.locate(&node.node().node_id) else {
                continue;
            };
            let read = ParsedRead {
                id: node.node(),
                max_age,
                timestamps: timestamps_to_return,
            };
            let value = Self::read_tag(table, context, machine, i, &read);
            node.set_result(value);
        }
        Ok(())
    }

    async fn write(
        &self,
        context: &RequestContext,
        nodes_to_write: &mut [&mut WriteNode],
    ) -> Result<(), StatusCode> {
        let Some(table) = self.table() else {
            return Ok(());
        };
        let type_tree = context.get_type_tree_for_user();
        for write in nodes_to_write.iter_mut() {
            let Some(TagNode::Tag(machine, i)) = table.locate(&write.value().node_id) else {
                continue;
            };
            let node = table.variable_now(machine, i);
            // Tags are read-only: the library's check refuses every write
            // with the status it would give for a node in its address space.
            let status = match node {
                Some(node) => {
                    match validate_node_write(&node, context, write.value(), type_tree.get()) {
                        Err(status) => status,
                        Ok(()) => StatusCode::BadNotWritable,
                    }
                }
                None => StatusCode::BadNodeIdUnknown,
            };
            write.set_status(status);
        }
        Ok(())
    }

    async fn create_monitored_items(
        &self,
        context: &RequestContext,
        items: &mut [&mut CreateMonitoredItem],
    ) -> Result<(), StatusCode> {
        let Some(table) = self.table() else {
            return Ok(());
        };
        for item in items.iter_mut() {
            let Some(TagNode::Tag(machine, i)) = table.locate(&item.item_to_monitor().node_id)
            else {
                continue;
            };
            let attribute = item.item_to_monitor().attribute_id;
            let node = {
                let mut slots = machine.lock();
                slots.get_mut(i).and_then(|slot| {
                    let node = table.variable(machine, i, slot)?;
                    if attribute == AttributeId::Value {
                        // Watched in the same lock as the first value is
                        // taken: a scan stored after it notifies the item.
                        slot.watchers += 1;
                        if slot.node_id.is_none() {
                            slot.node_id = Some(Arc::new(table.tag_id(machine, i)));
                        }
                    }
                    Some(node)
                })
            };
            let Some(node) = node else {
                item.set_status(StatusCode::BadNodeIdUnknown);
                continue;
            };
            if let Err(status) = validate_node_read(&node, context, item.item_to_monitor()) {
                if attribute == AttributeId::Value {
                    unwatch(machine, i);
                }
                item.set_status(status);
                continue;
            }
            // As the in-memory manager does: the Value's first value with
            // both timestamps, other attributes as the item asks.
            let timestamps = if attribute == AttributeId::Value {
                TimestampsToReturn::Both
            } else {
                item.timestamps_to_return()
            };
            let value = read_node_value(&node, context, item.item_to_monitor(), 0.0, timestamps);
            if attribute == AttributeId::EventNotifier {
                // A variable has no events.
                item.set_status(StatusCode::BadAttributeIdInvalid);
                continue;
            }
            if value.status() != StatusCode::BadAttributeIdInvalid {
                item.set_initial_value(value);
            }
            item.set_status(StatusCode::Good);
        }
        Ok(())
    }

    async fn delete_monitored_items(&self, _context: &RequestContext, items: &[&MonitoredItemRef]) {
        let Some(table) = self.table() else {
            return;
        };
        for item in items {
            if item.attribute() != AttributeId::Value {
                continue;
            }
            if let Some(TagNode::Tag(machine, i)) = table.locate(item.node_id()) {
                unwatch(machine, i);
            }
        }
    }
}

fn unwatch(machine: &MachineTags, i: usize) {
    if let Some(slot) = machine.lock().get_mut(i) {
        slot.watchers = slot.watchers.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TagTable {
        let tags = vec!["temp_c".to_string(), "rpm".to_string()];
        TagTable::new(2, [("press-7", tags.as_slice())])
    }

    fn located(table: &TagTable, ns: u16, path: &str) -> Option<(String, Option<usize>)> {
        table.locate(&NodeId::new(ns, path)).map(|node| match node {
            TagNode::Folder(m) => (m.name.clone(), None),
            TagNode::Tag(m, i) => (m.name.clone(), Some(i)),
        })
    }

    #[test]
    fn tag_names_are_found_by_slot_and_by_name() {
        let names: Vec<String> = ["zeta", "alpha", "Druck_µbar", "alpha2", "b", "a"]
            .map(String::from)
            .to_vec();
        let tags = TagNames::new(&names);
        assert_eq!(tags.len(), names.len());
        for (i, name) in names.iter().enumerate() {
            assert_eq!(tags.name(i), name);
            assert_eq!(tags.index_of(name), Some(i), "{name}");
        }
        for absent in ["", "alph", "alpha3", "zz", "Druck"] {
            assert_eq!(tags.index_of(absent), None, "{absent}");
        }
        assert_eq!(tags.name(names.len()), "");
        let none = TagNames::new(&[]);
        assert_eq!((none.len(), none.index_of("a")), (0, None));
    }

    #[test]
    fn tag_node_ids_are_the_contract_paths() {
        let t = table();
        assert_eq!(
            located(&t, 2, "Machines/press-7/Tags/rpm"),
            Some(("press-7".into(), Some(1)))
        );
        assert_eq!(
            located(&t, 2, "Machines/press-7/Tags"),
            Some(("press-7".into(), None))
        );
        for other in [
            "Machines/press-7/Tags/nope",
            "Machines/press-8/Tags/rpm",
            "Machines/press-7/Predictions",
            "Machines/press-7",
            "Machines/press-7/Tags/rpm/x",
            "Models/wear/State",
            "",
        ] {
            assert_eq!(located(&t, 2, other), None, "{other}");
        }
        // Same path, another namespace.
        assert_eq!(located(&t, 3, "Machines/press-7/Tags/rpm"), None);
        let numeric = NodeId::new(2, 5u32);
        assert!(t.locate(&numeric).is_none());
        let machine = t.machine("press-7").expect("machine");
        assert_eq!(
            t.tag_id(machine, 0),
            NodeId::new(2, "Machines/press-7/Tags/temp_c")
        );
    }

    #[test]
    fn a_tag_waits_for_its_first_value_as_a_read_only_base_data_type_scalar() {
        let t = table();
        let machine = t.machine("press-7").expect("machine");
        let slot = &machine.lock()[0];
        assert_eq!(
            slot.value.status,
            Some(StatusCode::BadWaitingForInitialData)
        );
        let Some(NodeType::Variable(v)) = t.variable(machine, 0, slot) else {
            panic!("not a variable");
        };
        assert_eq!(v.data_type(), NodeId::from(DataTypeId::BaseDataType));
        assert_eq!(v.access_level().bits(), AccessLevel::CURRENT_READ.bits());
        assert_eq!(v.value_rank(), -1);
    }
}
