//! The OPC UA client source against the simulator's OPC UA spindle (an
//! async-opcua server with its namespace away from index 2): SignAndEncrypt
//! with a user, subscription and poll modes, a server restart that moves the
//! namespace, a deleted node, a wrong password and an unknown server
//! certificate.
//!
//! The spindle is paused while values are compared, so what the source
//! delivers must equal the simulator's own state exactly.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use ironbridge_connectors::opcua::{OpcUaMachineConfig, OpcUaSource, ReadMode};
use ironbridge_connectors::{Quality, Scan, SourceStats, SourceStatus, TagValue};
use ironbridge_simulator::{
    Fault, FaultSchedule, OpcUaMachine, OpcUaOptions, OpcUaStatus, OpcUaUser, SpindleVariable,
    NAMESPACE_URI,
};
use ironbridge_tests::tcp_proxy::TcpProxy;
use opcua::types::{StatusCode, Variant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Bounds every wait: a hung test fails instead of blocking CI.
const DEADLINE: Duration = Duration::from_secs(60);
const USER: &str = "gateway";
const PASSWORD: &str = "spindle-source-test";
const PASSWORD_ENV: &str = "IRONBRIDGE_TEST_SPINDLE_PASSWORD";

/// The tags a test reads: every spindle variable under a tag name.
const TAGS: &[(&str, SpindleVariable)] = &[
    ("speed_rpm", SpindleVariable::Speed),
    ("load_pct", SpindleVariable::Load),
    ("bearing_temp_c", SpindleVariable::BearingTemperature),
    ("vibration_mm_s", SpindleVariable::Vibration),
    ("running", SpindleVariable::Running),
    ("fault_state", SpindleVariable::LabelFaultState),
    ("bearings_replaced", SpindleVariable::LabelBearingsReplaced),
];

struct Spindle {
    machine: OpcUaMachine,
    status: watch::Receiver<OpcUaStatus>,
    port: u16,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Spindle {
    async fn start(pki: &Path, faults: &[&str]) -> Spindle {
        Self::start_with(pki, faults, |_| {}).await
    }

    async fn start_with(
        pki: &Path,
        faults: &[&str],
        adjust: impl FnOnce(&mut OpcUaOptions),
    ) -> Spindle {
        let mut options = OpcUaOptions::new(
            pki,
            OpcUaUser {
                username: USER.into(),
                password: PASSWORD.into(),
            },
        );
        // The gateway's client certificate is new to the server.
        options.trust_client_certs = true;
        options.time_scale = 600.0;
        options.faults = FaultSchedule::new(
            faults
                .iter()
                .map(|f| Fault::parse_cli(f).expect("fault spec"))
                .collect(),
        );
        adjust(&mut options);
        let machine = OpcUaMachine::new(options).expect("spindle");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let cancel = CancellationToken::new();
        let task = {
            let machine = machine.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                if let Err(e) = machine.serve(listener, cancel).await {
                    panic!("spindle stopped: {e}");
                }
            })
        };
        let mut status = machine.status();
        tokio::time::timeout(DEADLINE, status.wait_for(|s| s.up))
            .await
            .expect("spindle up in time")
            .expect("status");
        Spindle {
            machine,
            status,
            port,
            cancel,
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("opc.tcp://127.0.0.1:{}/", self.port)
    }

    /// The spindle's values now, by tag name, as the tags should read them.
    fn expected(&self) -> HashMap<&'static str, TagValue> {
        let snapshot = self.machine.snapshot();
        TAGS.iter()
            .map(|(tag, variable)| (*tag, expected_value(variable.value(&snapshot.state))))
            .collect()
    }

    async fn stop(self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(DEADLINE, self.task).await;
    }
}

/// What a tag must hold for a value the simulator serves (by its own
/// Variant, not through the connector's decoder).
fn expected_value(variant: Variant) -> TagValue {
    match variant {
        Variant::Double(x) => TagValue::Float(x),
        Variant::Boolean(b) => TagValue::Bool(b),
        Variant::Int32(i) => TagValue::Int(i64::from(i)),
        Variant::UInt32(u) => TagValue::UInt(u64::from(u)),
        other => panic!("the spindle serves an unexpected type: {other:?}"),
    }
}

fn config(
    spindle: &Spindle,
    client_pki: &Path,
    mode: ReadMode,
    extra_tags: &[(&str, &str)],
) -> OpcUaMachineConfig {
    std::env::set_var(PASSWORD_ENV, PASSWORD);
    let mut text = format!(
        r#"
        name = "spindle-1"
        endpoint = "{endpoint}"
        security_policy = "Basic256Sha256"
        security_mode = "SignAndEncrypt"
        username = "{USER}"
        password_env = "{PASSWORD_ENV}"
        trust_server_certs = true
        pki_dir = {pki:?}
        publishing_interval_ms = 100
        poll_interval_ms = 100
        request_timeout_ms = 2000
        backoff = {{ initial_ms = 100, max_ms = 500 }}
        "#,
        endpoint = spindle.endpoint(),
        pki = client_pki.display().to_string(),
    );
    for (tag, variable) in TAGS {
        text.push_str(&format!(
            "[[tags]]\nname = \"{tag}\"\nnode = \"nsu={NAMESPACE_URI};s={}\"\nsampling_interval_ms = 50\n",
            variable.node_id()
        ));
    }
    for (tag, node) in extra_tags {
        text.push_str(&format!("[[tags]]\nname = \"{tag}\"\nnode = \"{node}\"\n"));
    }
    let mut config: OpcUaMachineConfig = toml::from_str(&text).expect("config parses");
    config.mode = mode;
    let problems = config.validate("spindle-1");
    assert!(problems.is_empty(), "{problems:?}");
    config
}

/// A running source and what it delivers.
struct Reader {
    scans: mpsc::Receiver<Scan>,
    stats: SourceStats,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    /// The latest reading of each tag, as a last-value cache would hold it,
    /// with its acquisition time.
    latest: HashMap<String, Latest>,
}

impl Reader {
    fn start(config: OpcUaMachineConfig) -> Reader {
        let source = OpcUaSource::new(config).expect("source");
        let stats = ironbridge_connectors::Source::stats(&source);
        let (tx, scans) = mpsc::channel(1024);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(source.run(tx, cancel.clone()));
        Reader {
            scans,
            stats,
            cancel,
            task,
            latest: HashMap::new(),
        }
    }

    /// Takes scans until `done` holds for the latest readings.
    async fn until(&mut self, what: &str, done: impl Fn(&HashMap<String, Latest>) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !done(&self.latest) {
            let scan = tokio::time::timeout_at(deadline, self.scans.recv())
                .await
                .unwrap_or_else(|_| panic!("{what}: not reached; latest: {:?}", self.latest))
                .expect("source running");
            for r in scan.readings {
                self.latest.insert(
                    r.tag.to_string(),
                    (r.value, r.quality, r.status, scan.acquired_at),
                );
            }
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the source stops on cancel")
            .expect("the source task does not panic");
    }
}

/// A tag's latest value, quality, the machine's own status and the
/// acquisition time.
type Latest = (
    Option<TagValue>,
    Quality,
    Option<SourceStatus>,
    std::time::SystemTime,
);

fn all_equal(latest: &HashMap<String, Latest>, expected: &HashMap<&'static str, TagValue>) -> bool {
    expected.iter().all(|(tag, value)| {
        latest
            .get(*tag)
            .is_some_and(|(v, q, _, _)| *q == Quality::Good && v.as_ref() == Some(value))
    })
}

#[tokio::test]
async fn opcua_subscription_reads_every_tag_by_namespace_uri_over_signandencrypt() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spindle = Spindle::start(&dir.path().join("server"), &[]).await;
    assert_ne!(
        spindle.status.borrow().namespace_index,
        Some(2),
        "the test needs a namespace away from index 2"
    );
    let mut reader = Reader::start(config(
        &spindle,
        &dir.path().join("client"),
        ReadMode::Subscription,
        &[],
    ));

    // Moving values arrive...
    let first = {
        reader
            .until("a first speed", |l| l.contains_key("speed_rpm"))
            .await;
        reader.latest["speed_rpm"].0.clone()
    };
    reader
        .until("the speed changes", |l| {
            l.get("speed_rpm").map(|r| &r.0) != Some(&first)
        })
        .await;
    // ...and with the spindle paused they equal its state exactly.
    spindle.machine.pause();
    let expected = spindle.expected();
    reader
        .until("every tag equals the spindle's state", |l| {
            all_equal(l, &expected)
        })
        .await;
    assert_eq!(reader.stats.outages(), 0);
    assert!(reader.stats.scans() > 0);
    reader.stop().await;
    spindle.stop().await;
}

#[tokio::test]
async fn opcua_poll_mode_reads_the_same_values() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spindle = Spindle::start(&dir.path().join("server"), &[]).await;
    spindle.machine.pause();
    let expected = spindle.expected();
    let mut reader = Reader::start(config(
        &spindle,
        &dir.path().join("client"),
        ReadMode::Poll,
        &[],
    ));
    reader
        .until("every tag equals the spindle's state", |l| {
            all_equal(l, &expected)
        })
        .await;
    // The next step shows up by polling alone.
    spindle.machine.advance(50);
    let moved = spindle.expected();
    assert_ne!(
        moved["speed_rpm"], expected["speed_rpm"],
        "the spindle moved"
    );
    reader
        .until("the polled values follow the spindle", |l| {
            all_equal(l, &moved)
        })
        .await;
    reader.stop().await;
    spindle.stop().await;
}

#[tokio::test]
async fn opcua_restart_with_namespaces_reordered_keeps_values_under_their_tags() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spindle = Spindle::start(&dir.path().join("server"), &["restart:at_s=4,down_s=1"]).await;
    let index_before = spindle.status.borrow().namespace_index;
    let mut reader = Reader::start(config(
        &spindle,
        &dir.path().join("client"),
        ReadMode::Subscription,
        &[],
    ));
    reader
        .until("values before the restart", |l| {
            l.get("speed_rpm").is_some_and(|r| r.1 == Quality::Good)
        })
        .await;
    // While the server is away every tag goes Bad, once.
    reader
        .until("every tag Bad while the server restarts", |l| {
            TAGS.iter()
                .all(|(tag, _)| l.get(*tag).is_some_and(|r| r.1 == Quality::Bad))
        })
        .await;
    let mut status = spindle.status.clone();
    tokio::time::timeout(DEADLINE, status.wait_for(|s| s.restarts >= 1 && s.up))
        .await
        .expect("the restart completes")
        .expect("status");
    let index_after = status.borrow().namespace_index;
    assert_ne!(
        index_before, index_after,
        "the restart fault must move the namespace for this test to mean anything"
    );

    spindle.machine.pause();
    let expected = spindle.expected();
    reader
        .until(
            "every tag equals the spindle's state after the restart",
            |l| all_equal(l, &expected),
        )
        .await;
    assert!(reader.stats.reconnects() >= 1, "never reconnected");
    assert_eq!(reader.stats.outages(), 1, "one outage, counted once");
    reader.stop().await;
    spindle.stop().await;
}

#[tokio::test]
async fn opcua_missing_nodes_and_namespaces_are_bad_and_the_others_keep_working() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spindle = Spindle::start(
        &dir.path().join("server"),
        &["delete-node:node=Spindle.Vibration,at_s=3"],
    )
    .await;
    let mut reader = Reader::start(config(
        &spindle,
        &dir.path().join("client"),
        ReadMode::Subscription,
        &[
            (
                "ghost",
                &format!("nsu={NAMESPACE_URI};s=Spindle.NoSuchNode"),
            ),
            ("elsewhere", "nsu=urn:no:such:namespace;s=Spindle.Speed"),
        ],
    ));
    reader
        .until("unknown node and namespace are Bad", |l| {
            ["ghost", "elsewhere"].iter().all(|t| {
                l.get(*t).is_some_and(|r| {
                    r.1 == Quality::Bad
                        && r.2 == Some(SourceStatus::OpcUa(StatusCode::BadNodeIdUnknown.bits()))
                })
            })
        })
        .await;
    // The deleted node turns Bad while the speed keeps moving.
    reader
        .until("the deleted node is Bad", |l| {
            l.get("vibration_mm_s").is_some_and(|r| r.1 == Quality::Bad)
        })
        .await;
    let speed = reader.latest["speed_rpm"].0.clone();
    reader
        .until("the other tags keep working", |l| {
            l.get("speed_rpm")
                .is_some_and(|r| r.1 == Quality::Good && r.0 != speed)
        })
        .await;
    assert_eq!(reader.stats.outages(), 0, "a missing node is no outage");
    reader.stop().await;
    spindle.stop().await;
}

#[tokio::test]
async fn opcua_wrong_password_is_one_outage_with_retries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spindle = Spindle::start(&dir.path().join("server"), &[]).await;
    let mut config = config(
        &spindle,
        &dir.path().join("client"),
        ReadMode::Subscription,
        &[],
    );
    let wrong_env = "IRONBRIDGE_TEST_SPINDLE_WRONG_PASSWORD";
    std::env::set_var(wrong_env, "not-the-password");
    config.password_env = Some(wrong_env.into());
    let mut reader = Reader::start(config);
    reader
        .until("every tag Bad", |l| {
            TAGS.iter()
                .all(|(tag, _)| l.get(*tag).is_some_and(|r| r.1 == Quality::Bad))
        })
        .await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while reader.stats.link_failures() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no retries");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reader.stats.outages(), 1, "retries are not new outages");
    assert_eq!(reader.stats.scans(), 0);
    reader.stop().await;
    spindle.stop().await;
}

#[tokio::test]
async fn opcua_unknown_server_certificate_is_refused_and_kept_for_an_operator() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spindle = Spindle::start(&dir.path().join("server"), &[]).await;
    let client_pki = dir.path().join("client");
    let mut config = config(&spindle, &client_pki, ReadMode::Subscription, &[]);
    config.trust_server_certs = false;
    let mut reader = Reader::start(config);
    reader
        .until("every tag Bad", |l| {
            TAGS.iter()
                .all(|(tag, _)| l.get(*tag).is_some_and(|r| r.1 == Quality::Bad))
        })
        .await;
    let rejected = client_pki.join("rejected");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let count = std::fs::read_dir(&rejected).map(|d| d.count()).unwrap_or(0);
        if count > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server certificate never landed in {}",
            rejected.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        reader.stats.scans(),
        0,
        "nothing is read from an untrusted server"
    );
    reader.stop().await;

    // An operator moves it to trusted/: the next start reads values.
    let trusted = client_pki.join("trusted");
    std::fs::create_dir_all(&trusted).expect("trusted dir");
    for entry in std::fs::read_dir(&rejected).expect("rejected dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("file name").to_owned();
        std::fs::rename(&path, trusted.join(name)).expect("move to trusted");
    }
    let mut config = self::config(&spindle, &client_pki, ReadMode::Subscription, &[]);
    config.trust_server_certs = false;
    let mut reader = Reader::start(config);
    reader
        .until("values once the certificate is trusted", |l| {
            l.get("speed_rpm").is_some_and(|r| r.1 == Quality::Good)
        })
        .await;
    reader.stop().await;
    spindle.stop().await;
}

#[tokio::test]
async fn opcua_discover_prints_a_machine_block_the_gateway_accepts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spindle = Spindle::start(&dir.path().join("server"), &[]).await;
    let password_env = "IRONBRIDGE_TEST_DISCOVER_PASSWORD";
    std::env::set_var(password_env, PASSWORD);
    let request = ironbridge::discover::DiscoverRequest {
        client: ironbridge::discover::OpcUaClientArgs {
            endpoint: spindle.endpoint(),
            security: "Aes256Sha256RsaPss".into(),
            mode: "SignAndEncrypt".into(),
            username: Some(USER.into()),
            password_env: password_env.into(),
            trust_server_cert: true,
            pki_dir: dir.path().join("client"),
        },
        max_nodes: 20_000,
    };
    let block = tokio::task::spawn_blocking(move || ironbridge::discover::run(request))
        .await
        .expect("discover task")
        .expect("discover");

    // Pasted below a gateway's own section, the block validates as it is.
    let file = dir.path().join("discovered.toml");
    std::fs::write(
        &file,
        format!("[opcua]\ninsecure_loopback_endpoint = true\n\n{block}"),
    )
    .expect("write");
    let config =
        ironbridge::config::GatewayConfig::load(&file).unwrap_or_else(|e| panic!("{e}\n{block}"));
    let machine = match &config.machines[..] {
        [ironbridge::config::MachineConfig::OpcUa(m)] => m,
        other => panic!("one OPC UA machine expected, got {other:?}"),
    };
    assert_eq!(machine.endpoint, spindle.endpoint());
    assert!(
        !machine.trust_server_certs,
        "the block never trusts by default"
    );
    // Every spindle variable is there, by namespace URI, with its unit.
    for variable in SpindleVariable::ALL {
        let node = format!("nsu={NAMESPACE_URI};s={}", variable.node_id());
        let tag = machine
            .tags
            .iter()
            .find(|t| t.node == node)
            .unwrap_or_else(|| panic!("{node} missing in\n{block}"));
        assert_eq!(
            tag.unit.as_deref(),
            variable.unit().map(|u| u.symbol),
            "{node}"
        );
    }
    spindle.stop().await;
}

// ---------------------------------------------------------------------------
// Against an independent server: Python asyncua (tests/peers/opcua_server.py).

mod asyncua {
    use super::*;
    use ironbridge_tests::opcua_peer::{OpcUaPeer, OpcUaPeerOptions, PeerValue, ValueRule};

    const PEER_USER: &str = "gateway";
    const PEER_PASSWORD: &str = "asyncua-peer-password";
    const PEER_PASSWORD_ENV: &str = "IRONBRIDGE_TEST_ASYNCUA_PASSWORD";

    /// A tag name for a peer node (`Line.Speed` → `line_speed`).
    fn tag_of(node: &str) -> String {
        node.trim_start_matches("s=")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    }

    fn peer_config(peer: &OpcUaPeer, client_pki: &Path, mode: ReadMode) -> OpcUaMachineConfig {
        std::env::set_var(PEER_PASSWORD_ENV, PEER_PASSWORD);
        let mut text = format!(
            r#"
            name = "line-1"
            endpoint = "{endpoint}"
            security_policy = "Aes128Sha256RsaOaep"
            security_mode = "SignAndEncrypt"
            username = "{PEER_USER}"
            password_env = "{PEER_PASSWORD_ENV}"
            trust_server_certs = true
            pki_dir = {pki:?}
            publishing_interval_ms = 100
            poll_interval_ms = 100
            request_timeout_ms = 3000
            backoff = {{ initial_ms = 100, max_ms = 1000 }}
            "#,
            endpoint = peer.endpoint(),
            pki = client_pki.display().to_string(),
        );
        for node in &peer.layout.nodes {
            text.push_str(&format!(
                "[[tags]]\nname = \"{}\"\nnode = \"{}\"\n",
                tag_of(&node.name),
                node.node_id
            ));
        }
        let mut config: OpcUaMachineConfig = toml::from_str(&text).expect("config parses");
        config.mode = mode;
        config
    }

    /// Whether the latest reading of every node is what the peer serves:
    /// value by its rule, quality and status by the peer's status, its own
    /// SourceTimestamp where the peer fixed one; a byte string is Bad.
    fn matches_peer(peer: &OpcUaPeer, latest: &HashMap<String, Latest>) -> Result<(), String> {
        for node in peer.layout.nodes.iter().filter(|n| n.present) {
            let tag = tag_of(&node.name);
            let Some((value, quality, status, at)) = latest.get(&tag) else {
                return Err(format!("{tag}: nothing yet"));
            };
            let want_quality = node.status.quality();
            if let ValueRule::Constant(PeerValue::BytesHex(_)) = node.rule {
                if *quality != Quality::Bad
                    || *status != Some(SourceStatus::OpcUa(StatusCode::BadTypeMismatch.bits()))
                {
                    return Err(format!(
                        "{tag}: a byte string must be Bad, got {quality:?} {status:?}"
                    ));
                }
                continue;
            }
            if *quality != want_quality {
                return Err(format!("{tag}: quality {quality:?}, want {want_quality:?}"));
            }
            if want_quality != Quality::Good
                && *status != Some(SourceStatus::OpcUa(node.status.code))
            {
                return Err(format!(
                    "{tag}: status {status:?}, want {}",
                    node.status.name
                ));
            }
            if want_quality == Quality::Bad {
                continue;
            }
            let Some(value) = value else {
                return Err(format!("{tag}: no value"));
            };
            let ok = match &node.rule {
                ValueRule::Constant(c) => c.matches(value),
                rule => match value {
                    TagValue::Float(x) => rule.tick_of(&PeerValue::float(*x)).is_some(),
                    TagValue::Float32(x) => {
                        rule.tick_of(&PeerValue::float(f64::from(*x))).is_some()
                    }
                    TagValue::UInt(u) => rule.tick_of(&PeerValue::Uint(*u)).is_some(),
                    _ => false,
                },
            };
            if !ok {
                return Err(format!(
                    "{tag}: {value:?} is not what the peer serves ({:?})",
                    node.rule
                ));
            }
            if let Some(us) = node.source_timestamp_us {
                let want = std::time::UNIX_EPOCH + Duration::from_micros(us as u64);
                if *at != want {
                    return Err(format!(
                        "{tag}: acquired at {at:?}, its SourceTimestamp is {want:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    async fn until_matches(reader: &mut Reader, peer: &OpcUaPeer, what: &str) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let check = matches_peer(peer, &reader.latest);
            if check.is_ok() {
                return;
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(remaining, reader.scans.recv()).await {
                Ok(Some(scan)) => {
                    for r in scan.readings {
                        reader.latest.insert(
                            r.tag.to_string(),
                            (r.value, r.quality, r.status, scan.acquired_at),
                        );
                    }
                }
                Ok(None) => panic!("{what}: the source stopped"),
                Err(_) => panic!("{what}: {check:?}"),
            }
        }
    }

    #[tokio::test]
    async fn opcua_asyncua_every_type_status_and_timestamp_as_the_server_gives_them() {
        let peer = OpcUaPeer::start(OpcUaPeerOptions::with_user(PEER_USER, PEER_PASSWORD))
            .await
            .expect("asyncua peer");
        assert_ne!(peer.layout.namespace_index, 2);
        for mode in [ReadMode::Subscription, ReadMode::Poll] {
            let mut reader = Reader::start(peer_config(
                &peer,
                &peer.dir().join(format!("client-{mode:?}")),
                mode,
            ));
            until_matches(
                &mut reader,
                &peer,
                &format!("{mode:?}: every node as served"),
            )
            .await;
            // The counter moves: values are live, not a first read only.
            let first = reader.latest["line_count"].0.clone();
            reader
                .until("the counter moves", |l| l["line_count"].0 != first)
                .await;
            assert_eq!(reader.stats.outages(), 0);
            reader.stop().await;
        }
    }

    #[tokio::test]
    async fn opcua_asyncua_restart_with_namespaces_reordered_and_a_node_gone() {
        let mut peer = OpcUaPeer::start(OpcUaPeerOptions::with_user(PEER_USER, PEER_PASSWORD))
            .await
            .expect("asyncua peer");
        let mut reader = Reader::start(peer_config(
            &peer,
            &peer.dir().join("client"),
            ReadMode::Subscription,
        ));
        until_matches(&mut reader, &peer, "before the restart").await;
        let before = peer.layout.namespace_index;

        let mut options = peer.options().clone();
        options.namespace_position = before + 2;
        options.omit_nodes = vec!["s=Line.Temperature".into()];
        peer.restart_with(options).await.expect("restart");
        assert_ne!(peer.layout.namespace_index, before, "the namespace moved");

        // The source sees the server go (every tag Bad), then reads the
        // new one by the moved namespace; the omitted node stays Bad.
        reader
            .until("the outage is seen", |l| l["line_count"].1 == Quality::Bad)
            .await;
        until_matches(&mut reader, &peer, "after the restart").await;
        reader
            .until("the node the server no longer has is Bad", |l| {
                l["line_temperature"].1 == Quality::Bad
                    && l["line_temperature"].2
                        == Some(SourceStatus::OpcUa(StatusCode::BadNodeIdUnknown.bits()))
            })
            .await;
        assert!(reader.stats.reconnects() >= 1);
        assert_eq!(reader.stats.outages(), 1, "one outage, counted once");
        reader.stop().await;
    }

    /// X.509 user identity: the peer accepts only its user certificate,
    /// after checking the token's signature with that certificate's key.
    #[tokio::test]
    async fn opcua_asyncua_x509_user_identity_is_accepted_and_another_certificate_refused() {
        let users = tempfile::tempdir().expect("temp dir");
        let peer = OpcUaPeer::start(OpcUaPeerOptions {
            user_cert_dir: Some(users.path().to_path_buf()),
            ..OpcUaPeerOptions::default()
        })
        .await
        .expect("asyncua peer");
        let user_cert = peer.layout.security.user_cert.clone().expect("user cert");
        let user_key = peer.layout.security.user_key.clone().expect("user key");
        assert!(!peer.layout.security.anonymous);

        let with_identity = |client: &str, certificate: &Path, private_key: &Path| {
            let mut config = peer_config(&peer, &peer.dir().join(client), ReadMode::Subscription);
            config.username = None;
            config.password_env = None;
            config.certificate = Some(certificate.to_path_buf());
            config.private_key = Some(private_key.to_path_buf());
            let problems = config.validate("line-1");
            assert!(problems.is_empty(), "{problems:?}");
            config
        };

        let mut reader = Reader::start(with_identity("client", &user_cert, &user_key));
        until_matches(&mut reader, &peer, "values under the X.509 identity").await;
        assert_eq!(reader.stats.outages(), 0);
        reader.stop().await;

        // Another certificate with its own valid key (the peer's server
        // certificate) is not the user the server knows: refused, retried,
        // one outage, nothing read.
        let other_cert = peer.server_cert().to_path_buf();
        let other_key = other_cert.with_file_name("server_key.pem");
        let mut reader = Reader::start(with_identity("client-other", &other_cert, &other_key));
        reader
            .until("every tag Bad", |l| {
                l.get("line_count").is_some_and(|r| r.1 == Quality::Bad)
            })
            .await;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while reader.stats.link_failures() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "no retries");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(reader.stats.outages(), 1, "retries are not new outages");
        assert_eq!(reader.stats.scans(), 0);
        reader.stop().await;
    }

    #[tokio::test]
    async fn opcua_asyncua_a_node_deleted_while_subscribed_turns_bad_alone() {
        let mut options = OpcUaPeerOptions::with_user(PEER_USER, PEER_PASSWORD);
        options.delete_nodes = vec!["s=Line.Running".into()];
        options.delete_after = Some(Duration::from_secs(4));
        let peer = OpcUaPeer::start(options).await.expect("asyncua peer");
        let mut reader = Reader::start(peer_config(
            &peer,
            &peer.dir().join("client"),
            ReadMode::Subscription,
        ));
        reader
            .until("the deleted node turns Bad", |l| {
                l.get("line_running").is_some_and(|r| {
                    r.1 == Quality::Bad
                        && r.2 == Some(SourceStatus::OpcUa(StatusCode::BadNodeIdUnknown.bits()))
                })
            })
            .await;
        let count = reader.latest["line_count"].0.clone();
        reader
            .until("the others keep working", |l| {
                l["line_count"].1 == Quality::Good && l["line_count"].0 != count
            })
            .await;
        assert_eq!(reader.stats.outages(), 0);
        reader.stop().await;
    }
}

/// Reconnects, how many a test may wait for (`IRONBRIDGE_TEST_RECONNECTS`
/// sets it for a longer soak).
fn reconnects_to_test() -> u64 {
    std::env::var("IRONBRIDGE_TEST_RECONNECTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000)
}

/// Thousands of outages in a row leave no task behind: every session's
/// event loop and subscription go with it. The connection runs through a
/// proxy that cuts it as soon as a session is up, so each reconnect is a
/// full SignAndEncrypt handshake through the configured address (not the
/// one the server advertises).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_reconnects_leak_no_task() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Each cut leaves the old session on the server until its timeout (as
    // any server would): room for them all.
    let target = reconnects_to_test();
    let spindle = Spindle::start_with(&dir.path().join("server"), &[], |o| {
        o.max_sessions = target as usize + 50;
    })
    .await;
    let proxy = TcpProxy::start(([127, 0, 0, 1], spindle.port).into())
        .await
        .expect("proxy");
    let mut config = config(
        &spindle,
        &dir.path().join("client"),
        ReadMode::Subscription,
        &[],
    );
    config.endpoint = format!("opc.tcp://{}/", proxy.addr());
    config.backoff.initial_ms = 5;
    config.backoff.max_ms = 20;
    let metrics = tokio::runtime::Handle::current().metrics();
    let mut reader = Reader::start(config);
    reader
        .until("values", |l| {
            l.get("speed_rpm").is_some_and(|r| r.1 == Quality::Good)
        })
        .await;
    let started = std::time::Instant::now();
    let mut alive_after_first = None;
    let mut cut_at = u64::MAX;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while reader.stats.reconnects() < target {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} reconnects",
            reader.stats.reconnects()
        );
        let reconnects = reader.stats.reconnects();
        if reconnects != cut_at {
            // A new session is up: cut it.
            cut_at = reconnects;
            proxy.cut();
        }
        // Keep taking scans so the source never blocks on a full channel.
        if let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(2), reader.scans.recv()).await
        {}
        if reconnects == 10 && alive_after_first.is_none() {
            alive_after_first = Some(metrics.num_alive_tasks());
        }
    }
    let alive = metrics.num_alive_tasks();
    let baseline = alive_after_first.expect("counted after the first reconnects");
    eprintln!(
        "{} reconnects in {:.1} s, {} link failures, tasks {baseline} -> {alive}",
        reader.stats.reconnects(),
        started.elapsed().as_secs_f64(),
        reader.stats.link_failures(),
    );
    // A leak would add at least one task per reconnect (hundreds here);
    // the proxy's and the spindle's connection tasks come and go.
    assert!(
        alive <= baseline + 10,
        "tasks grew from {baseline} to {alive} over {} reconnects",
        reader.stats.reconnects()
    );
    // Still reading after all of them: the last session is left up.
    reader.latest.clear();
    reader
        .until("values after the last reconnect", |l| {
            l.get("speed_rpm").is_some_and(|r| r.1 == Quality::Good)
        })
        .await;
    reader.stop().await;
    spindle.stop().await;
}
