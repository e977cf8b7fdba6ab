//! The OPC UA test machine (`opcua_server.py`) checked by an independent
//! client (`opcua_probe.py`, python asyncua), so that the gateway's OPC UA
//! client tests can rely on what the layout says: secure endpoints only,
//! the user login, the namespace at the configured index (and elsewhere after
//! a restart), the exact values and statuses, the ticking values, the trust
//! list, a variable that vanishes.
//!
//! Every value compared comes from the peer's layout, never from here.

use anyhow::Context as _;
use ironbridge_tests::opcua_peer::{
    ClientCerts, OpcUaLayout, OpcUaPeer, OpcUaPeerOptions, PeerValue, ValueRule, MACHINE_NAMESPACE,
};
use ironbridge_tests::opcua_probe::{ProbeReport, ProbeRequest};

const USER: &str = "operator";
const PASSWORD: &str = "s3cret-für-tests";

fn present_ids(layout: &OpcUaLayout) -> Vec<String> {
    layout
        .nodes
        .iter()
        .filter(|n| n.present)
        .map(|n| n.node_id.clone())
        .collect()
}

/// Every present variable in `round` reads as its rule and status say, with
/// its fixed SourceTimestamp where it has one; lists every mismatch.
fn check_round(report: &ProbeReport, round: usize, layout: &OpcUaLayout) -> anyhow::Result<()> {
    let reads = report.rounds.get(round).context("round missing")?;
    let mut wrong = Vec::new();
    for node in layout.nodes.iter().filter(|n| n.present) {
        let read = reads
            .get(&node.node_id)
            .with_context(|| format!("{} not read", node.node_id))?;
        let value_ok = node.rule.tick_of(&read.value).is_some();
        let type_ok = read.value == PeerValue::Null
            || read.variant_type.as_deref() == Some(node.data_type.as_str());
        let status_ok = read.status_code == node.status.code && read.status == node.status.name;
        let stamp_ok = node
            .source_timestamp_us
            .is_none_or(|t| read.source_timestamp_us == Some(t));
        if !(value_ok && type_ok && status_ok && stamp_ok) {
            wrong.push(format!(
                "{}: read {read:?}, peer serves {node:?}",
                node.name
            ));
        }
    }
    anyhow::ensure!(wrong.is_empty(), "wrong reads:\n{}", wrong.join("\n"));
    Ok(())
}

#[tokio::test]
async fn secure_machine_with_user_and_a_namespace_that_moves() -> anyhow::Result<()> {
    let mut peer = OpcUaPeer::start(OpcUaPeerOptions::with_user(USER, PASSWORD)).await?;
    let layout = peer.layout.clone();
    let position = peer.options().namespace_position;
    assert_eq!(layout.namespace_index, position);
    assert_ne!(
        layout.namespace_index, 2,
        "the default must not be the usual 2"
    );
    assert_eq!(
        layout.namespace_array[usize::from(position)],
        MACHINE_NAMESPACE
    );
    assert_eq!(layout.security.user.as_deref(), Some(USER));
    assert!(!layout.security.anonymous && !layout.security.insecure);
    assert_eq!(layout.security.client_certs, ClientCerts::Any);

    let speed = layout.node("Line.Speed")?.node_id.clone();
    let count = layout.node("Line.Count")?.node_id.clone();
    let mut request = ProbeRequest::new(peer.endpoint());
    request.client_pki = Some(peer.dir().join("probe-pki"));
    request.server_cert = Some(peer.server_cert().to_path_buf());
    request.user = Some((USER.into(), PASSWORD.into()));
    request.read = present_ids(&layout);
    request.unit = layout
        .nodes
        .iter()
        .filter(|n| n.unit.is_some())
        .map(|n| n.node_id.clone())
        .collect();
    request.rounds = 2;
    request.change_node = Some(count.clone());
    request.try_password = Some(format!("{PASSWORD}-wrong"));
    request.try_anonymous = true;
    request.try_insecure = true;
    let report = request.run().await?;

    // Endpoints: exactly the layout's policies, all SignAndEncrypt, user
    // login only, the layout's certificate; no SecurityPolicy None.
    let mut policies: Vec<&str> = report
        .endpoints
        .iter()
        .map(|e| e.policy_uri.as_str())
        .collect();
    policies.sort_unstable();
    let mut expected: Vec<&str> = layout
        .security
        .policy_uris
        .iter()
        .map(String::as_str)
        .collect();
    expected.sort_unstable();
    assert_eq!(policies, expected, "{:?}", report.endpoints);
    assert!(!policies.iter().any(|p| p.ends_with("#None")));
    for e in &report.endpoints {
        assert_eq!(e.mode, layout.security.mode, "{e:?}");
        assert_eq!(e.user_tokens, ["UserName"], "{e:?}");
        assert_eq!(
            e.server_cert_sha1.as_deref(),
            Some(&*layout.server_cert_sha1)
        );
        assert_eq!(e.application_uri, layout.application_uri);
        assert_eq!(e.url, layout.endpoint_url);
    }

    // The session: namespace where configured, every value as the rules say.
    assert!(report.connected, "{:?}", report.error);
    assert_eq!(report.namespace_array, layout.namespace_array);
    assert_eq!(
        report.namespace_index(MACHINE_NAMESPACE),
        Some(usize::from(position))
    );
    check_round(&report, 0, &layout)?;
    check_round(&report, 1, &layout)?;
    for node in layout.nodes.iter().filter(|n| n.unit.is_some()) {
        assert_eq!(report.units.get(&node.node_id), node.unit.as_ref());
    }

    // Values move: the counter went up between the rounds (the probe waited
    // for a change), and the speed is on its sawtooth in both.
    let tick = |round: usize, id: &str| -> anyhow::Result<u64> {
        let node = layout.nodes.iter().find(|n| n.node_id == id).unwrap();
        node.rule
            .tick_of(&report.rounds[round][id].value)
            .with_context(|| format!("{id} off its rule in round {round}"))
    };
    assert!(tick(1, &count)? > tick(0, &count)?);
    tick(0, &speed)?;
    tick(1, &speed)?;
    assert!(matches!(
        layout.node("Line.Speed")?.rule,
        ValueRule::Sawtooth { .. }
    ));

    // Refusals: wrong password, anonymous, and a session without security
    // even though the client insists.
    let attempt = |name: &str| report.attempts.get(name).cloned().unwrap();
    let wrong = attempt("wrong_password");
    assert!(!wrong.connected);
    assert!(
        wrong
            .error
            .as_deref()
            .unwrap_or("")
            .contains("BadUserAccessDenied"),
        "{wrong:?}"
    );
    let anonymous = attempt("anonymous");
    assert!(!anonymous.connected, "{anonymous:?}");
    let insecure = attempt("insecure");
    assert!(!insecure.connected, "{insecure:?}");
    assert_eq!(insecure.refused_at.as_deref(), Some("create_session"));

    // Restart on the same port with the namespace elsewhere and a variable
    // gone: same certificate (the pinned one still works), namespace moved.
    let blob = layout.node("Line.Blob")?.node_id.clone();
    let moved = position + 2;
    peer.restart_with(OpcUaPeerOptions {
        namespace_position: moved,
        omit_nodes: vec![blob.clone()],
        ..OpcUaPeerOptions::with_user(USER, PASSWORD)
    })
    .await?;
    let after = peer.layout.clone();
    assert_eq!(after.port, layout.port);
    assert_eq!(after.endpoint_url, layout.endpoint_url);
    assert_eq!(after.server_cert_sha1, layout.server_cert_sha1);
    assert!(!after.server_cert_created);
    assert_eq!(after.namespace_index, moved);
    assert!(!after.node("Line.Blob")?.present);

    let mut request = ProbeRequest::new(peer.endpoint());
    request.policy = "Aes256Sha256RsaPss".into();
    request.client_pki = Some(peer.dir().join("probe-pki"));
    request.server_cert = Some(layout.server_cert.clone());
    request.user = Some((USER.into(), PASSWORD.into()));
    request.read = vec![count.clone(), blob.clone()];
    let report = request.run().await?;
    assert!(report.connected, "{:?}", report.error);
    assert_eq!(
        report.namespace_index(MACHINE_NAMESPACE),
        Some(usize::from(moved))
    );
    let reads = &report.rounds[0];
    assert!(after
        .node("Line.Count")?
        .rule
        .tick_of(&reads[&count].value)
        .is_some());
    assert_eq!(reads[&blob].status, "BadNodeIdUnknown", "{reads:?}");
    Ok(())
}

#[tokio::test]
async fn insecure_option_trust_list_and_a_vanishing_node() -> anyhow::Result<()> {
    let trust = tempfile::tempdir()?;
    let shaky = "s=Line.Shaky";
    let mut peer = OpcUaPeer::start(OpcUaPeerOptions {
        insecure: true,
        trusted_client_certs: Some(trust.path().to_path_buf()),
        delete_nodes: vec![shaky.into()],
        delete_after: Some(std::time::Duration::from_millis(500)),
        ..OpcUaPeerOptions::default()
    })
    .await?;
    let layout = peer.layout.clone();
    assert!(layout.security.insecure && layout.security.anonymous);
    assert_eq!(layout.security.client_certs, ClientCerts::Trusted);
    let shaky_node = layout.node("Line.Shaky")?;
    assert!(shaky_node.present && shaky_node.delete_after_s.is_some());

    // Not (yet) in the trust list: refused, with the certificate the probe
    // made for itself.
    let pki = peer.dir().join("probe-pki");
    let mut request = ProbeRequest::new(peer.endpoint());
    request.client_pki = Some(pki.clone());
    request.try_insecure = true;
    let report = request.run().await?;
    assert!(
        report
            .endpoints
            .iter()
            .any(|e| e.policy_uri.ends_with("#None") && e.mode == "None"),
        "{:?}",
        report.endpoints
    );
    assert!(!report.connected);
    assert!(
        report
            .error
            .as_deref()
            .unwrap_or("")
            .contains("BadCertificateUntrusted"),
        "{:?}",
        report.error
    );
    // --insecure: a session without security is served.
    assert!(report.attempts["insecure"].connected, "{report:?}");

    // Trusted while the server runs: accepted; and the node vanishes.
    std::fs::copy(pki.join("probe_cert.der"), trust.path().join("probe.der"))?;
    request.try_insecure = false;
    request.read = vec![layout.node("Line.Temperature")?.node_id.clone()];
    request.wait_gone = Some(shaky_node.node_id.clone());
    let report = request.run().await?;
    assert!(report.connected, "{:?}", report.error);
    check_round_single(&report, &layout, "Line.Temperature")?;
    assert_eq!(report.gone, Some(true), "{report:?}");

    assert!(peer.terminate().await?, "no clean exit on SIGTERM");
    Ok(())
}

fn check_round_single(
    report: &ProbeReport,
    layout: &OpcUaLayout,
    name: &str,
) -> anyhow::Result<()> {
    let node = layout.node(name)?;
    let read = &report.rounds[0][&node.node_id];
    anyhow::ensure!(
        node.rule.tick_of(&read.value).is_some() && read.status_code == node.status.code,
        "{name}: read {read:?}, peer serves {node:?}"
    );
    Ok(())
}
