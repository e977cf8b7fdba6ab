//! `ironbridge model activate|rollback|shadow|unshadow`: an OPC UA client of
//! a running gateway that calls the methods on `Models/<model>` (admin role,
//! over SignAndEncrypt), so operators and pipelines can script version
//! changes.

use std::time::Duration;

use ironbridge_connectors::opcua::{open_session, LiveSession};
use opcua::types::{AttributeId, NodeId, ReadValueId, StatusCode, TimestampsToReturn, Variant};

use crate::discover::OpcUaClientArgs;
use crate::opcua_server::NAMESPACE_URI;

/// What to do to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelAction {
    Activate { version: String },
    Rollback,
    StartShadow { version: String },
    StopShadow,
}

impl ModelAction {
    /// The version the action names, if it names one.
    fn version(&self) -> Option<&str> {
        match self {
            ModelAction::Activate { version } | ModelAction::StartShadow { version } => {
                Some(version)
            }
            ModelAction::Rollback | ModelAction::StopShadow => None,
        }
    }
}

/// Why a model command did not do what it was asked.
#[derive(Debug)]
pub enum ModelCommandError {
    /// The arguments or the connection: nothing was asked of the gateway.
    Unusable(String),
    /// The gateway refused or the version failed; the active one serves.
    Refused(String),
}

/// The gateway answered; what serves now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCommandOutcome {
    pub model: String,
    /// The active version before and after.
    pub before: String,
    pub after: String,
    /// The shadow version after, if one runs.
    pub shadow: Option<String>,
}

/// Connects, calls the method and reads the result back.
pub fn run(
    client: &OpcUaClientArgs,
    model: &str,
    action: &ModelAction,
) -> Result<ModelCommandOutcome, ModelCommandError> {
    let options = client
        .session_options("ironbridge model")
        .map_err(ModelCommandError::Unusable)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ModelCommandError::Unusable(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(async {
        let live = open_session(&options).await.map_err(|e| {
            let hint = if e.contains("BadCertificateUntrusted") {
                format!(
                    " (the gateway does not trust this command's certificate yet: move it from \
                     the gateway's pki/rejected/ to pki/trusted/; it is {}/own/cert.der)",
                    options.pki_dir.display()
                )
            } else if e.to_lowercase().contains("certificate") {
                format!(
                    " (an unknown gateway certificate lands in {}/rejected/: move it to \
                     trusted/, or pass --trust-server-cert)",
                    options.pki_dir.display()
                )
            } else {
                String::new()
            };
            ModelCommandError::Unusable(format!("{e}{hint}"))
        })?;
        let result = call(&live, model, action).await;
        live.close().await;
        result
    })
}

/// Loading a model takes a while on a small edge CPU.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

async fn call(
    live: &LiveSession,
    model: &str,
    action: &ModelAction,
) -> Result<ModelCommandOutcome, ModelCommandError> {
    let session = &live.session;
    let namespaces = session
        .read_namespace_array()
        .await
        .map_err(|e| ModelCommandError::Unusable(format!("cannot read the NamespaceArray: {e}")))?;
    let ns = namespaces.get_index(NAMESPACE_URI).ok_or_else(|| {
        ModelCommandError::Unusable(format!(
            "the server has no namespace {NAMESPACE_URI}: not an IronBridge gateway"
        ))
    })?;
    let node = |path: String| NodeId::new(ns, path);
    let model_path = format!("Models/{model}");
    let before = read_text(live, node(format!("{model_path}/ActiveVersion")))
        .await
        .map_err(|e| {
            ModelCommandError::Unusable(format!("model {model:?} on this gateway: {e}"))
        })?;
    let method = match action {
        ModelAction::Activate { .. } => "Activate",
        ModelAction::Rollback => "Rollback",
        ModelAction::StartShadow { .. } => "StartShadow",
        ModelAction::StopShadow => "StopShadow",
    };
    let arguments: Vec<Variant> = action
        .version()
        .map(|v| Variant::from(v.to_string()))
        .into_iter()
        .collect();
    let request = (
        node(model_path.clone()),
        node(format!("{model_path}/{method}")),
        Some(arguments),
    );
    let result = tokio::time::timeout(CALL_TIMEOUT, session.call_one(request))
        .await
        .map_err(|_| ModelCommandError::Unusable(format!("no answer within {CALL_TIMEOUT:?}")))?
        .map_err(|e| ModelCommandError::Unusable(format!("the call failed: {e}")))?;
    let status = result.status_code;
    if !status.is_good() {
        let detail = match (status, action) {
            (s, _) if s == StatusCode::BadUserAccessDenied => {
                "only a user with the admin role, over SignAndEncrypt, may change versions"
                    .to_string()
            }
            (s, action) if s == StatusCode::BadInvalidArgument && action.version().is_some() => {
                format!(
                    "the gateway has no version {:?} of {model}",
                    action.version().unwrap_or_default()
                )
            }
            (s, ModelAction::Activate { version } | ModelAction::StartShadow { version })
                if s == StatusCode::BadInvalidState =>
            {
                let reason = read_text(
                    live,
                    node(format!("{model_path}/Versions/{version}/FailureReason")),
                )
                .await
                .unwrap_or_else(|e| format!("(reason unreadable: {e})"));
                format!("version {version} failed, {before} keeps serving: {reason}")
            }
            (s, ModelAction::Rollback) if s == StatusCode::BadInvalidState => {
                "no previous version to roll back to".to_string()
            }
            (s, ModelAction::StopShadow) if s == StatusCode::BadInvalidState => {
                "no shadow version is running".to_string()
            }
            _ => String::new(),
        };
        return Err(ModelCommandError::Refused(format!(
            "{method}: {status} {detail}"
        )));
    }
    // The gateway publishes the new state as the swap happens; allow for
    // that hand-off before reading it back.
    let mut after = String::new();
    let mut shadow = String::new();
    for _ in 0..20 {
        after = read_text(live, node(format!("{model_path}/ActiveVersion")))
            .await
            .map_err(ModelCommandError::Unusable)?;
        shadow = read_text(live, node(format!("{model_path}/Shadow/Version")))
            .await
            .unwrap_or_default();
        let settled = match action {
            ModelAction::Activate { version } => &after == version,
            ModelAction::Rollback => after != before,
            ModelAction::StartShadow { version } => &shadow == version,
            ModelAction::StopShadow => shadow.is_empty(),
        };
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(ModelCommandOutcome {
        model: model.to_string(),
        before,
        after,
        shadow: (!shadow.is_empty()).then_some(shadow),
    })
}

async fn read_text(live: &LiveSession, node: NodeId) -> Result<String, String> {
    let read = ReadValueId {
        node_id: node.clone(),
        attribute_id: AttributeId::Value as u32,
        ..Default::default()
    };
    let values = live
        .session
        .read(&[read], TimestampsToReturn::Neither, 0.0)
        .await
        .map_err(|e| format!("cannot read {node}: {e}"))?;
    let value = values
        .into_iter()
        .next()
        .ok_or_else(|| format!("no value for {node}"))?;
    if let Some(status) = value.status.filter(|s| !s.is_good()) {
        return Err(format!("{node}: {status}"));
    }
    match value.value {
        Some(Variant::String(s)) => Ok(s.as_ref().to_string()),
        other => Err(format!("{node} holds {other:?}, not text")),
    }
}
