//! The OPC UA server against an independent client (python asyncua, run from
//! the project's venv by `tests/peers/opcua_client.py`): the address-space
//! contract, reads, subscriptions and the security defaults, over the
//! loopback None endpoint and over SignAndEncrypt with client certificates.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use ironbridge::config::GatewayIdentity;
use ironbridge::opcua_server::{
    self, AddressSpaceLayout, MachineLayout, ModelLayout, ModelStatusView, OpcUaPublisher,
    OpcUaServerConfig, OpcUaUserConfig, Role, NAMESPACE_URI,
};
use ironbridge_connectors::{Prediction, Quality, Scan, TagReading, TagValue};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const MACHINE: &str = "press-7";
const GOOD_TAG: &str = "temp_c";
const BAD_TAG: &str = "spindle_rpm";
const MODEL: &str = "wear";
const OUTPUT: &str = "wear_pct";
const VERSION: &str = "v3";
const SHA256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn layout() -> AddressSpaceLayout {
    AddressSpaceLayout {
        gateway: GatewayIdentity {
            name: Some("line-3".into()),
            tags: [("site".to_string(), "north".to_string())].into(),
        },
        machines: vec![MachineLayout {
            name: MACHINE.into(),
            tags: vec![GOOD_TAG.into(), BAD_TAG.into()],
        }],
        models: vec![ModelLayout {
            name: MODEL.into(),
            inputs: vec![GOOD_TAG.into(), BAD_TAG.into()],
            outputs: vec![OUTPUT.into()],
            machines: vec![MACHINE.into()],
            registry_alias: None,
            remote_url: None,
        }],
    }
}

/// Every path of the contract below `Objects/IronBridge` for [`layout`].
fn contract_paths() -> Vec<String> {
    let m = format!("Machines/{MACHINE}");
    let p = format!("{m}/Predictions/{MODEL}");
    let models = format!("Models/{MODEL}");
    let mut paths = vec![
        "Machines".to_string(),
        m.clone(),
        format!("{m}/Tags"),
        format!("{m}/Tags/{GOOD_TAG}"),
        format!("{m}/Tags/{BAD_TAG}"),
        format!("{m}/Predictions"),
        p.clone(),
        format!("{p}/{OUTPUT}"),
        format!("{p}/ModelVersion"),
        "Models".to_string(),
        models.clone(),
        format!("{models}/Versions"),
        format!("{models}/Activate"),
        format!("{models}/Rollback"),
        format!("{models}/StartShadow"),
        format!("{models}/StopShadow"),
        format!("{models}/Shadow"),
        format!("{models}/Shadow/Version"),
        format!("{models}/Shadow/{MACHINE}"),
        format!("{models}/Shadow/{MACHINE}/{OUTPUT}"),
        format!("{models}/Gate"),
        format!("{models}/Drift"),
        format!("{models}/Drift/{GOOD_TAG}"),
        format!("{models}/Drift/{BAD_TAG}"),
        format!("{models}/Drift/{OUTPUT}"),
    ];
    for var in [
        "ShadowVersion",
        "Metric",
        "Samples",
        "Mean",
        "Lower",
        "Upper",
        "Margin",
        "Psi",
        "Decision",
    ] {
        paths.push(format!("{models}/Gate/{var}"));
    }
    for var in [
        "ActiveVersion",
        "Sha256",
        "LoadedAt",
        "State",
        "InferenceCount",
        "Inputs",
        "Outputs",
    ] {
        paths.push(format!("{models}/{var}"));
    }
    // The gateway's own health.
    for path in [
        "Gateway",
        "Gateway/Version",
        "Gateway/Commit",
        "Gateway/Name",
        "Gateway/Tags",
        "Gateway/Tags/site",
        "Gateway/StartedAt",
        "Gateway/UptimeSeconds",
        "Gateway/Ready",
        "Gateway/NotReady",
        "Gateway/Machines",
        "Gateway/Sink",
        "Gateway/Sink/State",
        "Gateway/Sink/BufferedLines",
    ] {
        paths.push(path.to_string());
    }
    paths.push(format!("Gateway/Machines/{MACHINE}"));
    paths.push(format!("Gateway/Machines/{MACHINE}/Up"));
    paths
}

/// Time with whole microseconds, the resolution the python client reports.
fn micros_since_epoch(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// What the feeder published: prediction value → acquisition time (µs).
type Published = Arc<Mutex<Vec<(f64, i64)>>>;

struct RunningServer {
    port: u16,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    feeder: tokio::task::JoinHandle<()>,
    published: Published,
}

impl RunningServer {
    async fn start(config: OpcUaServerConfig) -> anyhow::Result<Self> {
        let port = config.port;
        let cancel = CancellationToken::new();
        let (publisher, task) =
            opcua_server::start(&config, &layout(), &[], cancel.clone()).await?;
        publisher.publish_model_status(&ModelStatusView {
            name: MODEL.into(),
            active_version: VERSION.into(),
            sha256: SHA256.into(),
            loaded_at: SystemTime::now(),
            state: "active".into(),
            inference_count: 0,
            inputs: vec![GOOD_TAG.into(), BAD_TAG.into()],
            outputs: vec![OUTPUT.into()],
            shadow_version: None,
            remote: None,
        });
        let published = Published::default();
        let feeder = tokio::spawn(feed(publisher, published.clone(), cancel.clone()));
        Ok(Self {
            port,
            cancel,
            task,
            feeder,
            published,
        })
    }

    /// A server with the loopback None endpoint (anonymous), its PKI in `dir`.
    async fn start_insecure(dir: &Path) -> anyhow::Result<Self> {
        Self::start(OpcUaServerConfig {
            port: free_port()?,
            pki_dir: dir.join("pki"),
            insecure_loopback_endpoint: true,
            ..Default::default()
        })
        .await
    }

    fn url(&self) -> String {
        format!("opc.tcp://127.0.0.1:{}/", self.port)
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.feeder.await?;
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .context("server did not stop after cancel")??;
        Ok(())
    }
}

/// Publishes a new scan and prediction about every 200 ms, as the gateway's
/// fan-out would: temp_c Good, spindle_rpm Bad (machine part unreachable).
async fn feed(publisher: OpcUaPublisher, published: Published, cancel: CancellationToken) {
    let start_us = micros_since_epoch(SystemTime::now());
    let mut k: u64 = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        k += 1;
        let acquired_at = UNIX_EPOCH + Duration::from_micros(start_us as u64 + k * 200_000);
        publisher.publish_scan(&Scan {
            machine: MACHINE.into(),
            acquired_at,
            readings: vec![
                TagReading {
                    tag: GOOD_TAG.into(),
                    value: Some(TagValue::Float(60.0 + k as f64 * 0.5)),
                    quality: Quality::Good,
                    status: None,
                },
                TagReading {
                    tag: BAD_TAG.into(),
                    value: None,
                    quality: Quality::Bad,
                    status: None,
                },
            ],
        });
        let wear = 10.0 + k as f64 * 0.25;
        if let Ok(mut p) = published.lock() {
            p.push((wear, micros_since_epoch(acquired_at)));
        }
        publisher.publish_prediction(&Prediction {
            machine: MACHINE.into(),
            model: MODEL.into(),
            version: VERSION.into(),
            inputs_acquired_at: acquired_at,
            outputs: vec![(OUTPUT.into(), wear)],
        });
    }
}

/// Runs the python client with `args`, returns its JSON answer.
async fn run_client(args: &[String], envs: &[(&str, &str)]) -> anyhow::Result<Value> {
    let root = repo_root();
    let python = root.join(".venv/bin/python");
    if !python.exists() {
        bail!("{} is missing: run scripts/setup.sh", python.display());
    }
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(root.join("tests/peers/opcua_client.py"))
        .args(args)
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let output = tokio::time::timeout(CLIENT_TIMEOUT, cmd.output())
        .await
        .context("python client did not finish")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "python client failed ({}):\n{stderr}\n{stdout}",
            output.status
        );
    }
    let line = stdout.lines().last().unwrap_or_default();
    eprintln!("client {args:?} answered {line}");
    serde_json::from_str(line).with_context(|| format!("client output: {stdout}\n{stderr}"))
}

fn s(v: &str) -> String {
    v.to_string()
}

fn contract_client_args(url: &str) -> Vec<String> {
    let tags = format!("Machines/{MACHINE}/Tags");
    vec![
        s("--url"),
        s(url),
        s("--browse"),
        s("--read"),
        format!("Models/{MODEL}/ActiveVersion"),
        s("--read"),
        format!("Models/{MODEL}/Sha256"),
        s("--read"),
        format!("Models/{MODEL}/Inputs"),
        s("--read"),
        format!("{tags}/{GOOD_TAG}"),
        s("--read"),
        format!("{tags}/{BAD_TAG}"),
        s("--write"),
        format!("{tags}/{GOOD_TAG}"),
        s("--subscribe"),
        format!("Machines/{MACHINE}/Predictions/{MODEL}/{OUTPUT}"),
        s("--count"),
        s("3"),
    ]
}

/// Checks (a) the browse tree, (b) the model reads, (c) the subscription,
/// (d) the Bad tag, and that writes are refused.
fn check_contract(answer: &Value, published: &Published) {
    assert_eq!(answer["connected"], true, "{answer}");
    assert_eq!(answer["root_node_id"], "IronBridge", "{answer}");

    let tree: HashMap<&str, &Value> = answer["tree"]
        .as_array()
        .expect("tree")
        .iter()
        .map(|n| (n["path"].as_str().expect("path"), n))
        .collect();
    for path in contract_paths() {
        let node = tree
            .get(path.as_str())
            .unwrap_or_else(|| panic!("{path} not reached by browsing; tree: {tree:#?}"));
        assert_eq!(node["node_id"], path.as_str(), "{node}");
        assert_eq!(node["id_type"], "String", "{node}");
        assert_eq!(node["namespace_uri"], NAMESPACE_URI, "{node}");
        assert_eq!(node["browse_namespace_uri"], NAMESPACE_URI, "{node}");
    }
    assert_eq!(tree.len(), contract_paths().len(), "{tree:#?}");

    let reads = &answer["reads"];
    let active = &reads[format!("Models/{MODEL}/ActiveVersion")];
    assert_eq!(active["value"], VERSION, "{active}");
    assert_eq!(active["is_good"], true, "{active}");
    assert_eq!(reads[format!("Models/{MODEL}/Sha256")]["value"], SHA256);
    assert_eq!(
        reads[format!("Models/{MODEL}/Inputs")]["value"],
        serde_json::json!([GOOD_TAG, BAD_TAG])
    );

    let good = &reads[format!("Machines/{MACHINE}/Tags/{GOOD_TAG}")];
    assert_eq!(good["is_good"], true, "{good}");
    // Declared Double (ns=0;i=11) once a float arrived.
    assert_eq!(good["data_type"], 11, "{good}");
    // A value `feed` published (60 + k/2, k >= 1): a Read brings the
    // waiting value into the address space (`hot_values`).
    let value = good["value"].as_f64().expect("numeric tag value");
    let k = (value - 60.0) * 2.0;
    assert!(k >= 1.0 && k.fract() == 0.0, "never published: {good}");
    let bad = &reads[format!("Machines/{MACHINE}/Tags/{BAD_TAG}")];
    assert_eq!(bad["is_bad"], true, "{bad}");
    assert_eq!(bad["status"], "BadNoCommunication", "{bad}");
    assert_eq!(bad["value"], Value::Null, "{bad}");

    let write = &answer["write"][format!("Machines/{MACHINE}/Tags/{GOOD_TAG}")];
    assert_ne!(write, "Good", "a client could write a tag: {answer}");

    let changes = answer["subscription"].as_array().expect("subscription");
    let published = published.lock().expect("lock").clone();
    let mut distinct = Vec::new();
    for change in changes {
        let value = change["value"].as_f64().expect("numeric prediction");
        let ts = change["source_timestamp_us"]
            .as_i64()
            .expect("source timestamp");
        let matching = published.iter().find(|(v, _)| *v == value);
        let Some((_, published_ts)) = matching else {
            panic!("client saw {value}, which was never published: {published:?}");
        };
        assert_eq!(ts, *published_ts, "SourceTimestamp of {value}");
        if !distinct.contains(&value) {
            distinct.push(value);
        }
    }
    assert!(distinct.len() >= 4, "initial + 3 new values: {changes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_contract_over_insecure_loopback_endpoint() -> anyhow::Result<()> {
    let pki = tempfile::tempdir()?;
    let server = RunningServer::start_insecure(pki.path()).await?;
    let answer = run_client(&contract_client_args(&server.url()), &[]).await?;
    check_contract(&answer, &server.published);
    // The forced None session the secure-defaults test expects refused
    // does work where the endpoint exists.
    let forced = [s("--url"), server.url(), s("--force-none-session")];
    let answer = run_client(&forced, &[]).await?;
    assert_eq!(answer["connected"], true, "{answer}");
    server.stop().await
}

/// The tag variables are served by the gateway's own node manager, not the
/// library's address space: what a client's configuration tool does with
/// one (translate its browse path, browse it both ways, read its
/// attributes, page through its folder, subscribe) must see an ordinary
/// variable of the contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_tag_variables_browse_translate_read_and_subscribe() -> anyhow::Result<()> {
    let pki = tempfile::tempdir()?;
    let server = RunningServer::start_insecure(pki.path()).await?;
    let tags = format!("Machines/{MACHINE}/Tags");
    let tag = format!("{tags}/{GOOD_TAG}");
    let args = [
        s("--url"),
        server.url(),
        s("--tag-probe"),
        tag.clone(),
        s("--subscribe"),
        tag.clone(),
        s("--count"),
        s("3"),
    ];
    let answer = run_client(&args, &[]).await?;
    server.stop().await?;
    let probe = &answer["probe"];

    assert_eq!(probe["translated"], tag.as_str(), "{probe}");
    assert_eq!(probe["missing"], "BadNoMatch", "{probe}");

    // Its parent by an inverse HasComponent (i=47), its type by
    // HasTypeDefinition (i=40): BaseDataVariableType (i=63).
    let refs = probe["references"].as_array().context("references")?;
    assert_eq!(refs.len(), 2, "{refs:#?}");
    let parent = refs
        .iter()
        .find(|r| r["reference_type"] == 47)
        .context("no HasComponent reference")?;
    assert_eq!(parent["is_forward"], false, "{parent}");
    assert_eq!(parent["node_id"], tags.as_str(), "{parent}");
    assert_eq!(parent["namespace_uri"], NAMESPACE_URI, "{parent}");
    assert_eq!(parent["browse_name"], "Tags", "{parent}");
    assert_eq!(parent["node_class"], "Object", "{parent}");
    let type_def = refs
        .iter()
        .find(|r| r["reference_type"] == 40)
        .context("no HasTypeDefinition reference")?;
    assert_eq!(type_def["is_forward"], true, "{type_def}");
    assert_eq!(type_def["node_id"], "63", "{type_def}");
    assert_eq!(
        type_def["browse_name"], "BaseDataVariableType",
        "{type_def}"
    );
    assert_eq!(type_def["node_class"], "VariableType", "{type_def}");

    let attributes = &probe["attributes"];
    let expected = serde_json::json!({
        "NodeClass": 2,
        "BrowseName": format!("{NAMESPACE_URI}:{GOOD_TAG}"),
        "DisplayName": GOOD_TAG,
        // Double once a float arrived.
        "DataType": 11,
        "ValueRank": -1,
        // CurrentRead only.
        "AccessLevel": 1,
        "UserAccessLevel": 1,
        "Historizing": false,
    });
    for (name, value) in expected.as_object().context("expected")? {
        assert_eq!(attributes[name]["status"], "Good", "{name}: {attributes}");
        assert_eq!(&attributes[name]["value"], value, "{name}: {attributes}");
    }

    // One reference an answer: the folder's children come back through
    // BrowseNext, each tag once, beside the folder's own references.
    let answers = probe["folder_answers"]
        .as_array()
        .context("folder answers")?;
    let mut children = Vec::new();
    for a in answers {
        assert_eq!(a["status"], "Good", "{a}");
        let refs = a["references"].as_array().context("references")?;
        assert!(refs.len() <= 1, "more than asked for: {a}");
        children.extend(refs.iter().filter_map(|r| r["node_id"].as_str()));
    }
    children.sort_unstable();
    let mut expected = vec![tag.clone(), format!("{tags}/{BAD_TAG}")];
    expected.sort_unstable();
    assert_eq!(children, expected, "{answers:#?}");

    // Values as `feed` publishes them (60 + k/2 at start + k * 200 ms),
    // each with its own SourceTimestamp.
    let changes = answer["subscription"].as_array().context("subscription")?;
    let mut last_ts = 0;
    for change in changes {
        let value = change["value"].as_f64().context("numeric tag value")?;
        let k = (value - 60.0) * 2.0;
        assert!(k >= 1.0 && k.fract() == 0.0, "never published: {change}");
        let ts = change["source_timestamp_us"]
            .as_i64()
            .context("timestamp")?;
        assert!(ts > last_ts, "timestamps must move on: {changes:?}");
        last_ts = ts;
        assert_eq!(change["status"], "Good", "{change}");
    }
    assert!(changes.len() >= 4, "initial + 3 new values: {changes:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_contract_over_sign_and_encrypt_with_user() -> anyhow::Result<()> {
    const PASSWORD_ENV: &str = "IRONBRIDGE_TEST_OPCUA_PW_SECURE";
    std::env::set_var(PASSWORD_ENV, "correct horse battery staple");
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    let config = OpcUaServerConfig {
        port: free_port()?,
        pki_dir: pki.clone(),
        trust_client_certs: true,
        users: vec![OpcUaUserConfig {
            username: "operator".into(),
            password_env: PASSWORD_ENV.into(),
            role: Role::Observer,
        }],
        ..Default::default()
    };
    let server = RunningServer::start(config).await?;
    let server_cert = pki.join("own/cert.der");
    assert!(
        server_cert.exists(),
        "server certificate made on first start"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(pki.join("private/private.pem"))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private key readable by others: {mode:o}");
    }

    let mut args = contract_client_args(&server.url());
    args.extend([
        s("--policy"),
        s("Basic256Sha256"),
        s("--client-pki"),
        dir.path().join("client").display().to_string(),
        s("--server-cert"),
        server_cert.display().to_string(),
        s("--user"),
        s("operator"),
        s("--password-env"),
        s(PASSWORD_ENV),
    ]);
    let answer = run_client(&args, &[(PASSWORD_ENV, "correct horse battery staple")]).await?;
    check_contract(&answer, &server.published);
    // trust_client_certs stores the accepted certificate for the admin to see.
    assert_eq!(std::fs::read_dir(pki.join("trusted"))?.count(), 1);
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_secure_defaults_refuse_none_untrusted_certs_and_bad_passwords() -> anyhow::Result<()>
{
    const PASSWORD_ENV: &str = "IRONBRIDGE_TEST_OPCUA_PW_DEFAULTS";
    const PASSWORD: &str = "s3cret-for-tests";
    std::env::set_var(PASSWORD_ENV, PASSWORD);
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    // Defaults, plus the one user a valid configuration needs.
    let config = OpcUaServerConfig {
        port: free_port()?,
        pki_dir: pki.clone(),
        users: vec![OpcUaUserConfig {
            username: "operator".into(),
            password_env: PASSWORD_ENV.into(),
            role: Role::Observer,
        }],
        ..Default::default()
    };
    let server = RunningServer::start(config).await?;
    let read_version = [s("--read"), format!("Models/{MODEL}/ActiveVersion")];

    // SecurityPolicy None: asyncua would already stop at the endpoint list;
    // the forced session checks that the server itself refuses.
    for force in [false, true] {
        let mut none_args = vec![s("--url"), server.url()];
        none_args.extend(read_version.clone());
        if force {
            none_args.push(s("--force-none-session"));
        }
        let answer = run_client(&none_args, &[]).await?;
        assert_eq!(answer["connected"], false, "None must be refused: {answer}");
        if force {
            let error = answer["error"].as_str().unwrap_or_default();
            assert!(error.starts_with("Bad"), "refused by the server: {answer}");
        }
    }

    let secure_args = |password_env: &str| {
        let mut args = vec![
            s("--url"),
            server.url(),
            s("--policy"),
            s("Aes256Sha256RsaPss"),
            s("--client-pki"),
            dir.path().join("client").display().to_string(),
            s("--server-cert"),
            pki.join("own/cert.der").display().to_string(),
            s("--user"),
            s("operator"),
            s("--password-env"),
            s(password_env),
        ];
        args.extend(read_version.clone());
        args
    };
    let env = [("RIGHT_PW", PASSWORD), ("WRONG_PW", "guess")];

    // An unknown client certificate is refused and parked for the admin.
    let answer = run_client(&secure_args("RIGHT_PW"), &env).await?;
    assert_eq!(answer["connected"], false, "untrusted cert: {answer}");
    let rejected: Vec<_> = std::fs::read_dir(pki.join("rejected"))?.collect::<Result<_, _>>()?;
    assert_eq!(
        rejected.len(),
        1,
        "the refused certificate lands in rejected/"
    );

    // The admin trusts it by moving it to trusted/.
    let cert = &rejected[0];
    std::fs::rename(cert.path(), pki.join("trusted").join(cert.file_name()))?;

    let answer = run_client(&secure_args("WRONG_PW"), &env).await?;
    assert_eq!(answer["connected"], false, "wrong password: {answer}");

    let answer = run_client(&secure_args("RIGHT_PW"), &env).await?;
    assert_eq!(
        answer["connected"], true,
        "trusted cert + password: {answer}"
    );
    assert_eq!(
        answer["reads"][format!("Models/{MODEL}/ActiveVersion")]["value"],
        VERSION
    );
    server.stop().await
}

#[tokio::test]
async fn opcua_start_refuses_invalid_config_before_binding() {
    let config = OpcUaServerConfig {
        host: "0.0.0.0".into(),
        insecure_loopback_endpoint: true,
        ..Default::default()
    };
    let err = opcua_server::start(&config, &layout(), &[], CancellationToken::new())
        .await
        .expect_err("insecure endpoint on all interfaces must be refused");
    assert!(
        err.to_string().contains("opcua.insecure_loopback_endpoint"),
        "{err}"
    );
}

/// Anything on the network can leave a certificate in `rejected/`: the
/// folder is kept within `rejected_certs_max` files, the newest kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_rejected_certificates_stay_bounded() -> anyhow::Result<()> {
    const PASSWORD_ENV: &str = "IRONBRIDGE_TEST_OPCUA_PW_REJECTED";
    std::env::set_var(PASSWORD_ENV, "for-the-bound-test");
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    let config = OpcUaServerConfig {
        port: free_port()?,
        pki_dir: pki.clone(),
        users: vec![OpcUaUserConfig {
            username: "operator".into(),
            password_env: PASSWORD_ENV.into(),
            role: Role::Observer,
        }],
        rejected_certs_max: 3,
        ..Default::default()
    };
    let server = RunningServer::start(config).await?;
    // Six clients, each with a certificate of its own, all refused.
    let mut newest = None;
    for i in 0..6 {
        let args = vec![
            s("--url"),
            server.url(),
            s("--policy"),
            s("Basic256Sha256"),
            s("--client-pki"),
            dir.path().join(format!("client-{i}")).display().to_string(),
            s("--app-uri"),
            format!("urn:ironbridge:test-client-{i}"),
        ];
        let answer = run_client(&args, &[]).await?;
        assert_eq!(answer["connected"], false, "untrusted: {answer}");
        newest = Some(format!("urn:ironbridge:test-client-{i}"));
        // Distinct modification times for "oldest first".
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let count = || std::fs::read_dir(pki.join("rejected")).map_or(0, |d| d.count());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while count() > 3 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "rejected/ still holds {} certificates",
            count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(count(), 3);
    // The newest client's certificate is among those kept.
    let newest = newest.unwrap_or_default();
    let kept_newest = std::fs::read_dir(pki.join("rejected"))?
        .filter_map(Result::ok)
        .any(|e| {
            std::fs::read(e.path())
                .map(|der| der.windows(newest.len()).any(|w| w == newest.as_bytes()))
                .unwrap_or(false)
        });
    assert!(kept_newest, "the newest refused certificate is kept");
    server.stop().await
}
