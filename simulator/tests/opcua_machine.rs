//! The OPC UA spindle against an independent client (python asyncua):
//! secure login, the namespace found by URI away from index 2, typed values
//! with units that move, endpoints, and the OPC UA faults.

mod common;

use std::collections::BTreeSet;

use common::*;
use ironbridge_simulator::{
    Fault, FaultSchedule, SpindleVariable, ValueKind, NAMESPACE_URI, PADDING_NAMESPACE_URI,
};
use serde_json::Value;

fn faults(specs: &[&str]) -> FaultSchedule {
    FaultSchedule::new(
        specs
            .iter()
            .map(|spec| Fault::parse_cli(spec).unwrap_or_else(|e| panic!("{spec}: {e}")))
            .collect(),
    )
}

fn type_name(kind: ValueKind) -> &'static str {
    match kind {
        ValueKind::Boolean => "Boolean",
        ValueKind::Int32 => "Int32",
        ValueKind::UInt32 => "UInt32",
        ValueKind::Double => "Double",
    }
}

#[tokio::test]
async fn a_secure_login_finds_typed_changing_values_with_units_away_from_index_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start_opcua(opcua_options(&server_pki(dir.path()))).await;
    let served_index = running.status.borrow().namespace_index;

    let mut args = secure_args(&running.url(), "Basic256Sha256", &dir.path().join("client"));
    args.extend(["--until-changed".into(), "Spindle.SimulatedTime".into()]);
    let reply = opcua_peer(&args).await;

    assert_eq!(reply["connected"], true, "{reply}");
    let ns = reply["namespace_index"].as_u64().expect("namespace found");
    assert_ne!(ns, 2, "the spindle's namespace must not sit at index 2");
    assert_eq!(Some(ns), served_index.map(u64::from));
    assert_eq!(reply["namespace_array"][2], PADDING_NAMESPACE_URI);
    assert_eq!(reply["namespace_array"][ns as usize], NAMESPACE_URI);

    let variables = reply["variables"].as_object().expect("variables browsed");
    let browsed: BTreeSet<&str> = variables.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = SpindleVariable::ALL.iter().map(|v| v.node_id()).collect();
    assert_eq!(browsed, expected);
    for variable in SpindleVariable::ALL {
        let info = &variables[variable.node_id()];
        assert_eq!(info["data_type"], type_name(variable.kind()), "{info}");
        assert_eq!(info["browse_namespace_index"].as_u64(), Some(ns));
        match variable.unit() {
            Some(unit) => {
                let units = &info["units"];
                assert_eq!(units["display_name"], unit.symbol, "{info}");
                assert_eq!(units["unit_id"].as_i64(), Some(i64::from(unit.unit_id())));
                assert_eq!(
                    units["namespace_uri"],
                    "http://www.opcfoundation.org/UA/units/un/cefact"
                );
                assert_eq!(units["browse_namespace_index"], 0);
            }
            None => assert!(info["units"].is_null(), "{info}"),
        }
    }
    assert_eq!(variables["Spindle.Speed"]["units"]["display_name"], "rpm");
    assert_eq!(
        variables["Spindle.BearingTemperature"]["units"]["display_name"],
        "°C"
    );
    assert_eq!(
        variables["Spindle.Vibration"]["units"]["display_name"],
        "mm/s"
    );

    let samples = reply["samples"].as_array().expect("samples");
    let time = |sample: &Value| sample["Spindle.SimulatedTime"]["value"].as_f64();
    let (first, last) = (&samples[0], &samples[samples.len() - 1]);
    assert!(
        time(last) > time(first),
        "values move over time: {first} then {last}"
    );
    for sample in samples {
        for (node, read) in sample.as_object().expect("sample") {
            assert_eq!(read["status"], "Good", "{node}: {read}");
            assert!(read["source_timestamp_us"].is_u64(), "{node}: {read}");
        }
        assert!(sample["Spindle.Running"]["value"].is_boolean());
        assert!(sample["Spindle.Label.FaultState"]["value"].is_i64());
        let degradation = sample["Spindle.Label.BearingDegradation"]["value"]
            .as_f64()
            .expect("degradation");
        assert!((0.0..=1.0).contains(&degradation));
    }
    running.stop().await;
}

#[tokio::test]
async fn every_secure_policy_logs_in_and_a_wrong_password_does_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start_opcua(opcua_options(&server_pki(dir.path()))).await;
    let url = running.url();
    let client_pki = dir.path().join("client");
    let policies = ["Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"];
    let replies = futures::future::join_all(policies.iter().map(|policy| {
        let mut args = secure_args(&url, policy, &client_pki);
        args.extend(["--read".into(), "Spindle.Speed".into()]);
        async move { opcua_peer(&args).await }
    }))
    .await;
    for (policy, reply) in policies.iter().zip(&replies) {
        assert_eq!(reply["connected"], true, "{policy}: {reply}");
        assert_eq!(
            reply["samples"][0]["Spindle.Speed"]["status"], "Good",
            "{policy}"
        );
    }

    let mut wrong = secure_args(&url, "Basic256Sha256", &client_pki);
    wrong.extend([
        "--password-env".into(),
        "IRONBRIDGE_SIM_TEST_NO_SUCH_VAR".into(),
    ]);
    let refused = opcua_peer(&wrong).await;
    assert_eq!(refused["connected"], false, "{refused}");
    running.stop().await;
}

#[tokio::test]
async fn the_insecure_endpoint_is_served_only_when_asked_for() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = server_pki(dir.path());
    let secure_only = start_opcua(opcua_options(&pki)).await;
    let mut insecure_options = opcua_options(&pki);
    insecure_options.insecure_endpoint = true;
    let with_insecure = start_opcua(insecure_options).await;

    let endpoints = |reply: &Value| -> Vec<(String, String, Vec<String>)> {
        reply["endpoints"]
            .as_array()
            .unwrap_or_else(|| panic!("endpoints: {reply}"))
            .iter()
            .map(|e| {
                let tokens = e["tokens"]
                    .as_array()
                    .map(|t| {
                        t.iter()
                            .filter_map(|t| t.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    e["policy"].as_str().unwrap_or_default().to_string(),
                    e["mode"].as_str().unwrap_or_default().to_string(),
                    tokens,
                )
            })
            .collect()
    };
    let list =
        |url: String| async move { opcua_peer(&["--url".into(), url, "--endpoints".into()]).await };
    let secure_listed = endpoints(&list(secure_only.url()).await);
    assert_eq!(secure_listed.len(), 3, "{secure_listed:?}");
    for (policy, mode, tokens) in &secure_listed {
        assert_ne!(policy, "None");
        assert_eq!(mode, "SignAndEncrypt");
        assert_eq!(tokens, &["UserName"]);
    }
    let insecure_listed = endpoints(&list(with_insecure.url()).await);
    assert_eq!(insecure_listed.len(), 4, "{insecure_listed:?}");
    // asyncua spells MessageSecurityMode.None as "None_" (None is a Python keyword).
    let none: Vec<_> = insecure_listed
        .iter()
        .filter(|(policy, _, _)| policy == "None")
        .collect();
    assert_eq!(none.len(), 1, "{insecure_listed:?}");
    assert!(none[0].1.starts_with("None"), "{none:?}");
    assert_eq!(none[0].2, ["Anonymous"]);

    let anonymous = opcua_peer(&[
        "--url".into(),
        with_insecure.url(),
        "--policy".into(),
        "None".into(),
        "--read".into(),
        "Spindle.Speed".into(),
    ])
    .await;
    assert_eq!(anonymous["connected"], true, "{anonymous}");
    assert_eq!(anonymous["samples"][0]["Spindle.Speed"]["status"], "Good");

    secure_only.stop().await;
    with_insecure.stop().await;
}

#[tokio::test]
async fn a_restart_fault_moves_the_namespace_and_keeps_the_string_node_ids() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut options = opcua_options(&server_pki(dir.path()));
    options.faults = faults(&["restart:at_s=0.2,down_s=0.3"]);
    let mut running = start_opcua(options).await;
    let before = running
        .status
        .borrow()
        .namespace_index
        .expect("namespace index");
    let after = running.wait_for(|s| s.restarts == 1 && s.up).await;
    let after_index = after.namespace_index.expect("namespace index");
    assert_ne!(after_index, before);
    assert_ne!(after_index, 2);

    let mut args = secure_args(&running.url(), "Basic256Sha256", &dir.path().join("client"));
    args.extend(["--read".into(), "Spindle.Speed".into()]);
    let reply = opcua_peer(&args).await;
    assert_eq!(reply["connected"], true, "{reply}");
    assert_eq!(
        reply["namespace_index"].as_u64(),
        Some(u64::from(after_index))
    );
    assert_eq!(
        reply["namespace_array"][after_index as usize],
        NAMESPACE_URI
    );
    assert_eq!(reply["samples"][0]["Spindle.Speed"]["status"], "Good");
    assert_eq!(
        reply["variables"].as_object().map(|v| v.len()),
        Some(SpindleVariable::ALL.len())
    );
    running.stop().await;
}

#[tokio::test]
async fn a_drop_fault_refuses_connections_and_the_server_comes_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut options = opcua_options(&server_pki(dir.path()));
    options.faults = faults(&["drop:at_s=0.3,for_s=1.5,every_s=3"]);
    let mut running = start_opcua(options).await;
    let index = running.status.borrow().namespace_index;

    // A connect while the status says down must be refused; if it succeeds,
    // the outage must have ended meanwhile (a busy machine), so try the next.
    let mut refused = false;
    for drops in 1..=5 {
        running.wait_for(|s| s.drops >= drops && !s.up).await;
        match tokio::net::TcpStream::connect(running.address).await {
            Err(_) => {
                refused = true;
                break;
            }
            Ok(_) => {
                // The server binds its listener again a moment before it
                // reports itself up: a connect in that gap is the drop
                // ending, not a connect during it. A server that accepted
                // during the 1.5 s drop would still say down after this.
                let mut status = running.status.clone();
                let now = tokio::time::timeout(
                    std::time::Duration::from_millis(500),
                    status.wait_for(|s| s.up || s.drops > drops),
                )
                .await
                .ok()
                .and_then(Result::ok)
                .map(|s| s.clone())
                .unwrap_or_else(|| running.status.borrow().clone());
                assert!(
                    now.up || now.drops > drops,
                    "connected during a drop: {now:?}"
                );
            }
        }
    }
    assert!(refused, "no connect was refused in five drops");

    let back = running.wait_for(|s| s.up).await;
    assert_eq!(back.namespace_index, index, "a drop keeps the namespaces");
    running.stop().await;
}

#[tokio::test]
async fn a_deleted_node_vanishes_and_reads_as_unknown() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut options = opcua_options(&server_pki(dir.path()));
    options.faults = faults(&["delete-node:node=Spindle.Vibration,at_s=0"]);
    let mut running = start_opcua(options).await;
    running
        .wait_for(|s| s.deleted_nodes.contains("Spindle.Vibration"))
        .await;

    let mut args = secure_args(&running.url(), "Basic256Sha256", &dir.path().join("client"));
    args.extend(["--read".into(), "Spindle.Vibration".into()]);
    let reply = opcua_peer(&args).await;
    assert_eq!(reply["connected"], true, "{reply}");
    let variables = reply["variables"].as_object().expect("variables");
    assert!(!variables.contains_key("Spindle.Vibration"));
    assert_eq!(variables.len(), SpindleVariable::ALL.len() - 1);
    let sample = &reply["samples"][0];
    assert_eq!(sample["Spindle.Vibration"]["status"], "BadNodeIdUnknown");
    assert_eq!(sample["Spindle.Speed"]["status"], "Good");
    running.stop().await;
}
