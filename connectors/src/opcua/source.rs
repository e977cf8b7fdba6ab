//! Reads one machine's OPC UA server: subscriptions (or the Read service in
//! poll mode), namespaces resolved at every connect, reconnects of our own.
//!
//! async-opcua can reconnect by itself, but it would recreate the monitored
//! items with the NodeIds of the first connect: after a server restart that
//! registers its namespaces in another order those point at other nodes.
//! So the library's retries are off (`session_retry_limit(0)`,
//! `disable_reconnects`) and every outage ends the session; the next connect
//! reads the NamespaceArray again, resolves every tag's node and recreates
//! the subscription.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::FutureExt;
use opcua::client::{MonitoredItemMap, OnSubscriptionNotificationCore, Session};
use opcua::types::{
    AttributeId, DataChangeFilter, DataChangeNotification, DataChangeTrigger, DeadbandType,
    ExtensionObject, MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId,
    NotificationMessage, ReadValueId, StatusChangeNotification, StatusCode, TimestampsToReturn,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::error::ConnectorError;
use crate::opcua::config::{Deadband, OpcUaMachineConfig, ReadMode};
use crate::opcua::decode::{acquired_at, reading, scans_by_time, Unreadable};
use crate::opcua::node::NodeAddress;
use crate::opcua::session::{open_session, LiveSession, SessionOptions};
use crate::scan::{Scan, TagReading};
use crate::source::{Source, SourceStats};

/// Publish responses waiting for the source task. Full (the gateway is not
/// taking scans): the newest notification is dropped and counted.
const NOTIFICATION_QUEUE: usize = 256;
/// How often a subscription's nodes are checked for deletion on the server.
const NODE_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Notifications one publish response may carry. Unlimited (0), a server
/// may put every change queued since the last publish in one response; past
/// the decoder's array limit the client drops the connection and loops
/// (measured: 1,000 items at 100 ms, BENCHMARKS.md §4).
const MAX_NOTIFICATIONS_PER_PUBLISH: u32 = 1000;
/// Subscription lifetime and keep-alive counts (in publishing intervals).
const LIFETIME_COUNT: u32 = 60;
const KEEP_ALIVE_COUNT: u32 = 10;

/// One machine read over OPC UA.
pub struct OpcUaSource {
    config: OpcUaMachineConfig,
    machine: Arc<str>,
    tag_names: Vec<Arc<str>>,
    nodes: Vec<NodeAddress>,
    stats: SourceStats,
}

impl std::fmt::Debug for OpcUaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpcUaSource")
            .field("machine", &self.machine)
            .field("endpoint", &self.config.endpoint)
            .finish_non_exhaustive()
    }
}

/// Why a session ended.
enum SessionEnd {
    Lost(ConnectorError),
    /// Cancelled, or nobody receives scans any more.
    Stop,
}

/// The tags that resolved on this connect, by index into the config.
struct Resolved {
    /// (tag index, NodeId on this server)
    nodes: Vec<(usize, NodeId)>,
    /// Tags whose node or namespace this server does not have.
    missing: Vec<usize>,
}

impl OpcUaSource {
    /// Checks the configuration and parses every node address; no I/O.
    pub fn new(config: OpcUaMachineConfig) -> Result<Self, ConnectorError> {
        let problems = config.validate(&config.name);
        if !problems.is_empty() {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Err(ConnectorError::Config(list.join("; ")));
        }
        let nodes = config
            .tags
            .iter()
            .map(|t| NodeAddress::parse(&t.node))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConnectorError::Config)?;
        Ok(Self {
            machine: Arc::from(config.name.as_str()),
            tag_names: config
                .tags
                .iter()
                .map(|t| Arc::from(t.name.as_str()))
                .collect(),
            nodes,
            stats: SourceStats::default(),
            config,
        })
    }

    /// Notifications dropped because the gateway did not take them fast
    /// enough.
    pub fn dropped_notifications(&self) -> u64 {
        self.stats.notifications_dropped()
    }

    fn link_error(&self, reason: impl Into<String>) -> ConnectorError {
        ConnectorError::Link {
            machine: self.config.name.clone(),
            reason: reason.into(),
        }
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    /// Connects, reads and reconnects until `cancel` fires or `out` closes.
    pub async fn run(self, out: mpsc::Sender<Scan>, cancel: CancellationToken) {
        let mut backoff = Backoff::new(self.config.backoff);
        let mut ever_connected = false;
        let mut outage_reported = false;
        // Tags reported as unusable on this server, so each is logged once
        // (again only if it recovers and fails anew).
        let mut reported: HashSet<usize> = HashSet::new();
        loop {
            let attempt = async {
                let options = SessionOptions::for_machine(&self.config)?;
                open_session(&options)
                    .await
                    .map_err(|reason| self.link_error(reason))
            };
            let connected = tokio::select! {
                () = cancel.cancelled() => return,
                connected = attempt => connected,
            };
            let failure = match connected {
                Ok(live) => {
                    if ever_connected {
                        self.stats.count_reconnect();
                        info!(
                            machine = %self.machine,
                            endpoint = %self.config.endpoint,
                            attempts = backoff.failures(),
                            "OPC UA session is back"
                        );
                    } else {
                        info!(machine = %self.machine, endpoint = %self.config.endpoint, "OPC UA session up");
                    }
                    ever_connected = true;
                    outage_reported = false;
                    backoff.reset();
                    self.stats.set_up(true);
                    let end = self.serve(&live, &out, &cancel, &mut reported).await;
                    self.stats.set_up(false);
                    live.close().await;
                    match end {
                        SessionEnd::Stop => return,
                        SessionEnd::Lost(e) => e,
                    }
                }
                Err(e) => e,
            };

            self.stats.count_link_failure();
            let delay = backoff.next_delay();
            if !outage_reported {
                outage_reported = true;
                self.stats.count_outage();
                warn!(
                    machine = %self.machine,
                    endpoint = %self.config.endpoint,
                    error = %failure,
                    next_delay_ms = delay.as_millis() as u64,
                    "OPC UA machine unreachable; reconnecting with backoff"
                );
                if !send(self.unreachable_scan(), &out, &cancel).await {
                    return;
                }
            } else {
                debug!(
                    machine = %self.machine,
                    attempt = backoff.failures(),
                    error = %failure,
                    next_delay_ms = delay.as_millis() as u64,
                    "OPC UA reconnect failed"
                );
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Reads the namespaces and resolves every tag's node on this server.
    async fn resolve(
        &self,
        session: &Session,
        reported: &mut HashSet<usize>,
    ) -> Result<Resolved, ConnectorError> {
        let namespaces =
            tokio::time::timeout(self.request_timeout(), session.read_namespace_array())
                .await
                .map_err(|_| self.link_error("no NamespaceArray within the request timeout"))?
                .map_err(|e| self.link_error(format!("cannot read the NamespaceArray: {e}")))?;
        let mut resolved = Resolved {
            nodes: Vec::with_capacity(self.nodes.len()),
            missing: Vec::new(),
        };
        for (i, node) in self.nodes.iter().enumerate() {
            match node.resolve(&namespaces) {
                Some(id) => resolved.nodes.push((i, id)),
                None => {
                    if reported.insert(i) {
                        warn!(
                            machine = %self.machine,
                            tag = %self.tag_names[i],
                            node = %node,
                            "the server has no such namespace; the tag is Bad"
                        );
                    }
                    resolved.missing.push(i);
                }
            }
        }
        Ok(resolved)
    }

    /// Delivers scans from one session until it is lost or the source stops.
    async fn serve(
        &self,
        live: &LiveSession,
        out: &mpsc::Sender<Scan>,
        cancel: &CancellationToken,
        reported: &mut HashSet<usize>,
    ) -> SessionEnd {
        let resolved = tokio::select! {
            () = cancel.cancelled() => return SessionEnd::Stop,
            r = self.resolve(&live.session, reported) => match r {
                Ok(r) => r,
                Err(e) => return SessionEnd::Lost(e),
            },
        };
        // Tags this server cannot serve are Bad from the start.
        if !resolved.missing.is_empty() {
            let scan = Scan {
                machine: self.machine.clone(),
                acquired_at: SystemTime::now(),
                readings: resolved
                    .missing
                    .iter()
                    .map(|&i| {
                        TagReading::bad(
                            self.tag_names[i].clone(),
                            Some(crate::scan::SourceStatus::OpcUa(
                                StatusCode::BadNodeIdUnknown.bits(),
                            )),
                        )
                    })
                    .collect(),
            };
            if !send(scan, out, cancel).await {
                return SessionEnd::Stop;
            }
        }
        match self.config.mode {
            ReadMode::Subscription => self.subscribe(live, &resolved, out, cancel, reported).await,
            ReadMode::Poll => self.poll(live, &resolved, out, cancel, reported).await,
        }
    }

    async fn subscribe(
        &self,
        live: &LiveSession,
        resolved: &Resolved,
        out: &mpsc::Sender<Scan>,
        cancel: &CancellationToken,
        reported: &mut HashSet<usize>,
    ) -> SessionEnd {
        let (tx, mut rx) = mpsc::channel(NOTIFICATION_QUEUE);
        let receiver = NotificationReceiver {
            machine: self.machine.clone(),
            tag_names: self.tag_names.clone(),
            nodes: self.nodes.iter().map(ToString::to_string).collect(),
            tx,
            stats: self.stats.clone(),
            unreadable: HashSet::new(),
        };
        let session = &live.session;
        let timeout = self.request_timeout();
        let setup = async {
            let publishing = Duration::from_millis(self.config.publishing_interval_ms);
            let subscription = session
                .create_subscription(
                    publishing,
                    LIFETIME_COUNT,
                    KEEP_ALIVE_COUNT,
                    MAX_NOTIFICATIONS_PER_PUBLISH,
                    0,
                    true,
                    receiver,
                )
                .await
                .map_err(|e| self.link_error(format!("cannot create a subscription: {e}")))?;
            let requests: Vec<MonitoredItemCreateRequest> = resolved
                .nodes
                .iter()
                .map(|(i, node)| self.monitored_item(*i, node.clone()))
                .collect();
            let results = session
                .create_monitored_items(subscription, TimestampsToReturn::Both, requests)
                .await
                .map_err(|e| self.link_error(format!("cannot create monitored items: {e}")))?;
            Ok::<_, ConnectorError>((subscription, results))
        };
        let (subscription, results) = tokio::select! {
            () = cancel.cancelled() => return SessionEnd::Stop,
            r = tokio::time::timeout(timeout * 2, setup) => match r {
                Ok(Ok(results)) => results,
                Ok(Err(e)) => return SessionEnd::Lost(e),
                Err(_) => return SessionEnd::Lost(self.link_error("subscription setup timed out")),
            },
        };
        // Items the server refused (unknown node, no Value attribute, bad
        // filter) are Bad; the others keep working.
        let mut refused = Vec::new();
        let mut missing: HashSet<usize> = HashSet::new();
        for ((i, _), result) in resolved.nodes.iter().zip(&results) {
            if result.result.status_code == StatusCode::BadNodeIdUnknown {
                missing.insert(*i);
            }
            if result.result.status_code.is_bad() {
                if reported.insert(*i) {
                    warn!(
                        machine = %self.machine,
                        tag = %self.tag_names[*i],
                        node = %self.nodes[*i],
                        status = %result.result.status_code,
                        "the server refused to monitor this node; the tag is Bad"
                    );
                }
                refused.push(TagReading::bad(
                    self.tag_names[*i].clone(),
                    Some(crate::scan::SourceStatus::OpcUa(
                        result.result.status_code.bits(),
                    )),
                ));
            } else {
                reported.remove(i);
            }
        }
        if !refused.is_empty() {
            let scan = Scan {
                machine: self.machine.clone(),
                acquired_at: SystemTime::now(),
                readings: refused,
            };
            if !send(scan, out, cancel).await {
                return SessionEnd::Stop;
            }
        }
        let mut ended = std::pin::pin!(live.lost());
        let mut node_check = tokio::time::interval(NODE_CHECK_INTERVAL);
        node_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        node_check.tick().await;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return SessionEnd::Stop,
                status = &mut ended => {
                    return SessionEnd::Lost(self.link_error(format!("session lost: {status}")));
                }
                _ = node_check.tick() => {
                    let checked = self
                        .check_nodes(&live.session, subscription, resolved, &mut missing, reported)
                        .await;
                    match checked {
                        Ok(Some(scan)) => {
                            if !send(scan, out, cancel).await {
                                return SessionEnd::Stop;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => return SessionEnd::Lost(e),
                    }
                }
                batch = rx.recv() => match batch {
                    Some(Notification::Scans(scans)) => {
                        for scan in scans {
                            self.stats.count_scan();
                            if !send(scan, out, cancel).await {
                                return SessionEnd::Stop;
                            }
                        }
                    }
                    Some(Notification::SubscriptionEnded(status)) => {
                        return SessionEnd::Lost(self.link_error(format!(
                            "the server ended the subscription: {status}"
                        )));
                    }
                    // The receiver lives in the session; it only goes with it.
                    None => return SessionEnd::Lost(self.link_error("subscription closed")),
                },
            }
        }
    }

    /// Finds monitored nodes the server deleted (many servers, async-opcua's
    /// among them, then simply stop notifying) and deleted nodes that came
    /// back (monitored again). Returns the readings that changed.
    async fn check_nodes(
        &self,
        session: &Session,
        subscription: u32,
        resolved: &Resolved,
        missing: &mut HashSet<usize>,
        reported: &mut HashSet<usize>,
    ) -> Result<Option<Scan>, ConnectorError> {
        let reads: Vec<ReadValueId> = resolved
            .nodes
            .iter()
            .map(|(_, node)| ReadValueId {
                node_id: node.clone(),
                attribute_id: AttributeId::NodeClass as u32,
                ..Default::default()
            })
            .collect();
        let timeout = self.request_timeout();
        let answers = tokio::time::timeout(
            timeout,
            session.read(&reads, TimestampsToReturn::Neither, 0.0),
        )
        .await
        .map_err(|_| self.link_error(format!("no answer to a node check within {timeout:?}")))?
        .map_err(|e| self.link_error(format!("node check failed: {e}")))?;
        let mut changed = Vec::new();
        let mut back = Vec::new();
        for ((i, node), answer) in resolved.nodes.iter().zip(&answers) {
            let gone = answer.status == Some(StatusCode::BadNodeIdUnknown);
            if gone && missing.insert(*i) {
                if reported.insert(*i) {
                    warn!(
                        machine = %self.machine,
                        tag = %self.tag_names[*i],
                        node = %self.nodes[*i],
                        "the server no longer has this node; the tag is Bad"
                    );
                }
                changed.push(TagReading::bad(
                    self.tag_names[*i].clone(),
                    Some(crate::scan::SourceStatus::OpcUa(
                        StatusCode::BadNodeIdUnknown.bits(),
                    )),
                ));
            } else if !gone && missing.contains(i) {
                back.push((*i, node.clone()));
            }
        }
        if !back.is_empty() {
            let requests = back
                .iter()
                .map(|(i, node)| self.monitored_item(*i, node.clone()))
                .collect();
            let results = tokio::time::timeout(
                timeout,
                session.create_monitored_items(subscription, TimestampsToReturn::Both, requests),
            )
            .await
            .map_err(|_| self.link_error("monitoring a node again timed out"))?
            .map_err(|e| self.link_error(format!("cannot monitor a node again: {e}")))?;
            for ((i, _), result) in back.iter().zip(&results) {
                if result.result.status_code.is_good() {
                    missing.remove(i);
                    reported.remove(i);
                    info!(
                        machine = %self.machine,
                        tag = %self.tag_names[*i],
                        node = %self.nodes[*i],
                        "the node is back and monitored again"
                    );
                }
            }
        }
        Ok((!changed.is_empty()).then(|| Scan {
            machine: self.machine.clone(),
            acquired_at: SystemTime::now(),
            readings: changed,
        }))
    }

    fn monitored_item(&self, index: usize, node: NodeId) -> MonitoredItemCreateRequest {
        let tag = &self.config.tags[index];
        let filter = match tag.deadband.and_then(|d| d.kind().ok()) {
            None => ExtensionObject::null(),
            Some(deadband) => {
                let (deadband_type, deadband_value) = match deadband {
                    Deadband::Absolute(v) => (DeadbandType::Absolute, v),
                    Deadband::Percent(v) => (DeadbandType::Percent, v),
                };
                ExtensionObject::from_message(DataChangeFilter {
                    trigger: DataChangeTrigger::StatusValue,
                    deadband_type: deadband_type as u32,
                    deadband_value,
                })
            }
        };
        MonitoredItemCreateRequest {
            item_to_monitor: ReadValueId {
                node_id: node,
                attribute_id: AttributeId::Value as u32,
                ..Default::default()
            },
            monitoring_mode: MonitoringMode::Reporting,
            requested_parameters: MonitoringParameters {
                // The tag's index, so notifications map to tags without a lookup.
                client_handle: handle_of(index),
                // The publishing interval as a number, not -1 (which Part 4,
                // 7.16 defines as the same): async-opcua servers (0.19)
                // stamp every value sampled "at the publishing interval"
                // with the SourceTimestamp of the first one, so a whole
                // history would land on one timestamp.
                sampling_interval: tag
                    .sampling_interval_ms
                    .unwrap_or(self.config.publishing_interval_ms as f64),
                filter,
                queue_size: tag.queue_size,
                discard_oldest: true,
            },
        }
    }

    async fn poll(
        &self,
        live: &LiveSession,
        resolved: &Resolved,
        out: &mpsc::Sender<Scan>,
        cancel: &CancellationToken,
        reported: &mut HashSet<usize>,
    ) -> SessionEnd {
        let reads: Vec<ReadValueId> = resolved
            .nodes
            .iter()
            .map(|(_, node)| ReadValueId {
                node_id: node.clone(),
                attribute_id: AttributeId::Value as u32,
                ..Default::default()
            })
            .collect();
        // The first Read as soon as the session is up, then on the clock's ticks.
        let mut clock =
            crate::poll_clock::PollClock::new(Duration::from_millis(self.config.poll_interval_ms));
        let mut ended = std::pin::pin!(live.lost());
        let timeout = self.request_timeout();
        let mut last_sample: Vec<Option<(SystemTime, crate::scan::Quality)>> =
            vec![None; self.nodes.len()];
        loop {
            tokio::select! {
                () = cancel.cancelled() => return SessionEnd::Stop,
                status = &mut ended => {
                    return SessionEnd::Lost(self.link_error(format!("session lost: {status}")));
                }
                () = clock.tick() => {}
            }
            self.stats.book_skipped_polls(&mut clock, &self.config.name);
            let read = tokio::time::timeout(
                timeout,
                live.session.read(&reads, TimestampsToReturn::Both, 0.0),
            );
            let values = tokio::select! {
                () = cancel.cancelled() => return SessionEnd::Stop,
                r = read => match r {
                    Ok(Ok(values)) => values,
                    Ok(Err(e)) => return SessionEnd::Lost(self.link_error(format!("Read failed: {e}"))),
                    Err(_) => return SessionEnd::Lost(self.link_error(format!("no Read answer within {timeout:?}"))),
                },
            };
            let received = SystemTime::now();
            let mut bad = 0;
            let mut readings = Vec::with_capacity(values.len());
            for ((i, _), value) in resolved.nodes.iter().zip(&values) {
                let (r, why) = reading(&self.tag_names[*i], value);
                let time = acquired_at(value, received);
                // A Read returns the last sample again until the value
                // changes: same SourceTimestamp, same sample. Only new ones
                // go on, as with a subscription.
                if last_sample[*i] == Some((time, r.quality)) {
                    continue;
                }
                last_sample[*i] = Some((time, r.quality));
                if r.value.is_none() {
                    bad += 1;
                    if reported.insert(*i) {
                        let status = value.status.unwrap_or(StatusCode::Good);
                        match &why {
                            Some(Unreadable::Type(t)) => warn!(
                                machine = %self.machine,
                                tag = %self.tag_names[*i],
                                node = %self.nodes[*i],
                                data_type = %t,
                                "value is neither a number, a boolean nor a string; the tag is Bad"
                            ),
                            None => warn!(
                                machine = %self.machine,
                                tag = %self.tag_names[*i],
                                node = %self.nodes[*i],
                                %status,
                                "the server gives no usable value for this node; the tag is Bad"
                            ),
                        }
                    }
                } else {
                    reported.remove(i);
                }
                readings.push((time, r));
            }
            let scans = scans_by_time(&self.machine, readings);
            self.stats.count_device_errors(bad);
            for scan in scans {
                self.stats.count_scan();
                if !send(scan, out, cancel).await {
                    return SessionEnd::Stop;
                }
            }
        }
    }

    /// Every tag Bad, stamped now: the machine cannot be read.
    fn unreachable_scan(&self) -> Scan {
        Scan {
            machine: self.machine.clone(),
            acquired_at: SystemTime::now(),
            readings: self
                .tag_names
                .iter()
                .map(|tag| {
                    TagReading::bad(
                        tag.clone(),
                        Some(crate::scan::SourceStatus::OpcUa(
                            StatusCode::BadNoCommunication.bits(),
                        )),
                    )
                })
                .collect(),
        }
    }
}

fn handle_of(index: usize) -> u32 {
    // Client handle 0 means "assign one" to async-opcua.
    u32::try_from(index).unwrap_or(u32::MAX - 1) + 1
}

/// `false` when the source should stop (cancelled or receiver gone).
async fn send(scan: Scan, out: &mpsc::Sender<Scan>, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        sent = out.send(scan) => sent.is_ok(),
    }
}

/// What the subscription callback hands to the source task.
enum Notification {
    Scans(Vec<Scan>),
    SubscriptionEnded(StatusCode),
}

/// Called by async-opcua for each publish response: turns it into scans (one
/// per SourceTimestamp) without waiting on anything.
struct NotificationReceiver {
    machine: Arc<str>,
    tag_names: Vec<Arc<str>>,
    nodes: Vec<String>,
    tx: mpsc::Sender<Notification>,
    stats: SourceStats,
    unreadable: HashSet<usize>,
}

impl NotificationReceiver {
    fn data_change(
        &mut self,
        change: DataChangeNotification,
        out: &mut Vec<(SystemTime, TagReading)>,
    ) {
        let received = SystemTime::now();
        for item in change.monitored_items.into_iter().flatten() {
            let Some(index) = (item.client_handle as usize).checked_sub(1) else {
                continue;
            };
            let Some(tag) = self.tag_names.get(index) else {
                continue;
            };
            let (r, why) = reading(tag, &item.value);
            if r.value.is_none() {
                self.stats.count_device_errors(1);
            }
            if let Some(Unreadable::Type(t)) = why {
                if self.unreadable.insert(index) {
                    warn!(
                        machine = %self.machine,
                        tag = %tag,
                        node = %self.nodes[index],
                        data_type = %t,
                        "value is neither a number, a boolean nor a string; the tag is Bad"
                    );
                }
            }
            out.push((acquired_at(&item.value, received), r));
        }
    }

    fn status_change(&mut self, change: StatusChangeNotification) {
        if change.status.is_bad() {
            self.forward(Notification::SubscriptionEnded(change.status));
        }
    }

    fn forward(&self, notification: Notification) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(notification) {
            let n = self.stats.count_notification_dropped();
            if n.is_power_of_two() {
                warn!(machine = %self.machine, total = n, "OPC UA notification queue full: notification dropped");
            }
        }
    }
}

impl OnSubscriptionNotificationCore for NotificationReceiver {
    fn on_subscription_notification(
        &mut self,
        notification: NotificationMessage,
        _items: MonitoredItemMap<'_>,
    ) {
        let Some(data) = notification.notification_data else {
            return;
        };
        let mut readings = Vec::new();
        for object in data {
            if object.inner_is::<DataChangeNotification>() {
                if let Some(change) = object.into_inner_as::<DataChangeNotification>() {
                    self.data_change(*change, &mut readings);
                }
            } else if object.inner_is::<StatusChangeNotification>() {
                if let Some(change) = object.into_inner_as::<StatusChangeNotification>() {
                    self.status_change(*change);
                }
            }
            // Events are never asked for.
        }
        if !readings.is_empty() {
            let scans = scans_by_time(&self.machine, readings);
            self.forward(Notification::Scans(scans));
        }
    }
}

impl Source for OpcUaSource {
    fn machine(&self) -> &str {
        &self.machine
    }

    fn tag_names(&self) -> Vec<Arc<str>> {
        self.tag_names.clone()
    }

    fn stats(&self) -> SourceStats {
        self.stats.clone()
    }

    fn run(
        self: Box<Self>,
        out: mpsc::Sender<Scan>,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        (*self).run(out, cancel).boxed()
    }
}
