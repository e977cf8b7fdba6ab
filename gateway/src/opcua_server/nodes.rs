//! The gateway's node manager: async-opcua's in-memory `SimpleNodeManager`
//! for everything (values, subscriptions), with our own `Call` so a model
//! method knows who calls it and over which channel. The simple manager's
//! method callbacks see only the arguments; role checks and the audit
//! (`user` of a `model_event`) need the session. Reads and new monitored
//! items first bring the [`HotValues`] they ask for into the address space.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use ironbridge_models::{ModelError, ModelLifecycle};
use opcua::server::address_space::AddressSpace;
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{
    InMemoryNodeManagerImpl, InMemoryNodeManagerImplBuilder, SimpleNodeManagerBuilder,
    SimpleNodeManagerImpl,
};
use opcua::server::node_manager::{
    MethodCall, MonitoredItemRef, MonitoredItemUpdateRef, ParsedReadValueId, RequestContext,
    ServerContext, WriteNode,
};
use opcua::server::CreateMonitoredItem;
use opcua::sync::RwLock;
use opcua::types::{
    AttributeId, DataValue, MessageSecurityMode, MonitoringMode, NodeId, StatusCode,
    TimestampsToReturn, Variant,
};

use super::config::Role;
use super::hot_values::HotValues;

/// The hot values, set once the address space exists (like the methods).
pub(crate) type SharedHotValues = Arc<OnceLock<HotValues>>;

/// The model methods under `Models/<model>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelMethod {
    /// `Activate(version: String)`.
    Activate,
    /// `Rollback()`.
    Rollback,
    /// `StartShadow(version: String)`.
    StartShadow,
    /// `StopShadow()`.
    StopShadow,
}

impl ModelMethod {
    pub const ALL: [ModelMethod; 4] = [
        ModelMethod::Activate,
        ModelMethod::Rollback,
        ModelMethod::StartShadow,
        ModelMethod::StopShadow,
    ];

    /// Browse name.
    pub fn name(self) -> &'static str {
        match self {
            ModelMethod::Activate => "Activate",
            ModelMethod::Rollback => "Rollback",
            ModelMethod::StartShadow => "StartShadow",
            ModelMethod::StopShadow => "StopShadow",
        }
    }

    fn takes_version(self) -> bool {
        matches!(self, ModelMethod::Activate | ModelMethod::StartShadow)
    }
}

/// Who may call what, and the models the methods act on.
#[derive(Default)]
pub struct ModelControl {
    /// Server user-token id (`user0`, ...) → user name and role.
    users: HashMap<String, (String, Role)>,
    /// Set once the address space exists (NodeIds need its namespace index).
    methods: OnceLock<HashMap<NodeId, (Arc<ModelLifecycle>, ModelMethod)>>,
}

impl ModelControl {
    pub fn new(users: HashMap<String, (String, Role)>) -> Self {
        Self {
            users,
            methods: OnceLock::new(),
        }
    }

    pub fn set_methods(&self, methods: HashMap<NodeId, (Arc<ModelLifecycle>, ModelMethod)>) {
        // Called once from `start`; a second call would be a bug, ignored.
        let _ = self.methods.set(methods);
    }

    async fn call(&self, context: &RequestContext, method: &mut MethodCall) {
        let Some((lifecycle, kind)) = self
            .methods
            .get()
            .and_then(|m| m.get(method.method_id()))
            .cloned()
        else {
            method.set_status(StatusCode::BadMethodInvalid);
            return;
        };
        let (user, role) = self
            .users
            .get(&context.token.0)
            .cloned()
            // Anonymous (and anything unknown) observes.
            .unwrap_or_else(|| ("anonymous".to_string(), Role::Observer));
        let encrypted =
            context.session.read().message_security_mode() == MessageSecurityMode::SignAndEncrypt;
        if role != Role::Admin || !encrypted {
            tracing::warn!(
                model = %lifecycle.name(), method = kind.name(), %user, role = role.as_str(),
                encrypted, "model method refused: admin over SignAndEncrypt only"
            );
            method.set_status(StatusCode::BadUserAccessDenied);
            return;
        }
        let version = match (kind.takes_version(), method.arguments()) {
            (true, [Variant::String(v)]) if !v.is_null() => v.as_ref().to_string(),
            (true, _) => {
                method.set_status(StatusCode::BadInvalidArgument);
                return;
            }
            (false, []) => String::new(),
            (false, _) => {
                method.set_status(StatusCode::BadTooManyArguments);
                return;
            }
        };
        // Loading a model takes a while and blocks: off the runtime's workers.
        let result = tokio::task::spawn_blocking(move || match kind {
            ModelMethod::Activate => lifecycle.activate(&version, &user),
            ModelMethod::Rollback => lifecycle.rollback(&user),
            ModelMethod::StartShadow => lifecycle.start_shadow(&version, &user),
            ModelMethod::StopShadow => lifecycle.stop_shadow(&user),
        })
        .await;
        let status = match result {
            Ok(Ok(_event)) => StatusCode::Good,
            // Asking for what already serves changes nothing: done.
            Ok(Err(ModelError::AlreadyActive { .. })) => StatusCode::Good,
            Ok(Err(ModelError::VersionNotFound { .. })) => StatusCode::BadInvalidArgument,
            // The reason is on the version's FailureReason node.
            Ok(Err(ModelError::ActivationFailed { .. })) => StatusCode::BadInvalidState,
            Ok(Err(ModelError::NoPreviousVersion { .. })) => StatusCode::BadInvalidState,
            Ok(Err(ModelError::NoShadow { .. })) => StatusCode::BadInvalidState,
            Ok(Err(e)) => {
                tracing::warn!("model method failed: {e}");
                StatusCode::BadInternalError
            }
            Err(e) => {
                tracing::error!("model method panicked: {e}");
                StatusCode::BadInternalError
            }
        };
        method.set_status(status);
    }
}

/// Builds [`GatewayNodes`] inside the server.
pub struct GatewayNodesBuilder {
    simple: SimpleNodeManagerBuilder,
    control: Arc<ModelControl>,
    hot: SharedHotValues,
}

impl GatewayNodesBuilder {
    pub(crate) fn new(
        namespace: NamespaceMetadata,
        name: &str,
        control: Arc<ModelControl>,
        hot: SharedHotValues,
    ) -> Self {
        Self {
            simple: SimpleNodeManagerBuilder::new(namespace, name),
            control,
            hot,
        }
    }
}

impl InMemoryNodeManagerImplBuilder for GatewayNodesBuilder {
    type Impl = GatewayNodes;

    fn build(self, context: ServerContext, address_space: &mut AddressSpace) -> GatewayNodes {
        GatewayNodes {
            simple: self.simple.build(context, address_space),
            control: self.control,
            hot: self.hot,
        }
    }
}

/// `SimpleNodeManagerImpl` for everything but `Call`.
pub struct GatewayNodes {
    simple: SimpleNodeManagerImpl,
    control: Arc<ModelControl>,
    hot: SharedHotValues,
}

#[async_trait]
impl InMemoryNodeManagerImpl for GatewayNodes {
    async fn init(&self, address_space: &mut AddressSpace, context: ServerContext) {
        self.simple.init(address_space, context).await
    }

    fn name(&self) -> &str {
        self.simple.name()
    }

    fn namespaces(&self) -> Vec<NamespaceMetadata> {
        self.simple.namespaces()
    }

    async fn read_values(
        &self,
        context: &RequestContext,
        address_space: &RwLock<AddressSpace>,
        nodes: &[&ParsedReadValueId],
        max_age: f64,
        timestamps_to_return: TimestampsToReturn,
    ) -> Vec<DataValue> {
        if let Some(hot) = self.hot.get() {
            hot.flush(address_space, nodes.iter().map(|n| &n.node_id));
        }
        self.simple
            .read_values(context, address_space, nodes, max_age, timestamps_to_return)
            .await
    }

    async fn create_value_monitored_items(
        &self,
        context: &RequestContext,
        address_space: &RwLock<AddressSpace>,
        items: &mut [&mut &mut CreateMonitoredItem],
    ) {
        // Watched before the waiting values are flushed and the first value
        // is read (by the simple manager's own `read_values`, not ours): a
        // value published in between goes to the address space at once and
        // notifies the new item.
        if let Some(hot) = self.hot.get() {
            for item in items.iter() {
                hot.watch(&item.item_to_monitor().node_id);
            }
            hot.flush(
                address_space,
                items.iter().map(|item| &item.item_to_monitor().node_id),
            );
        }
        self.simple
            .create_value_monitored_items(context, address_space, items)
            .await
    }

    async fn modify_monitored_items(
        &self,
        context: &RequestContext,
        items: &[&MonitoredItemUpdateRef],
    ) {
        self.simple.modify_monitored_items(context, items).await
    }

    async fn set_monitoring_mode(
        &self,
        context: &RequestContext,
        mode: MonitoringMode,
        items: &[&MonitoredItemRef],
    ) {
        self.simple.set_monitoring_mode(context, mode, items).await
    }

    async fn delete_monitored_items(&self, context: &RequestContext, items: &[&MonitoredItemRef]) {
        if let Some(hot) = self.hot.get() {
            for item in items {
                if item.attribute() == AttributeId::Value {
                    hot.unwatch(item.node_id());
                }
            }
        }
        self.simple.delete_monitored_items(context, items).await
    }

    async fn write(
        &self,
        context: &RequestContext,
        address_space: &RwLock<AddressSpace>,
        nodes_to_write: &mut [&mut WriteNode],
    ) -> Result<(), StatusCode> {
        self.simple
            .write(context, address_space, nodes_to_write)
            .await
    }

    async fn call(
        &self,
        context: &RequestContext,
        _address_space: &RwLock<AddressSpace>,
        methods_to_call: &mut [&mut &mut MethodCall],
    ) -> Result<(), StatusCode> {
        for method in methods_to_call {
            self.control.call(context, method).await;
        }
        Ok(())
    }
}
