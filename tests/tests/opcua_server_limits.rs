//! `[opcua.limits]` on the gateway's OPC UA server, met by independent
//! asyncua clients.

use anyhow::Result;
use ironbridge_tests::gateway_rig::{GatewayRig, RigOptions, MACHINE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_beyond_max_sessions_are_refused_and_the_rest_keep_working() -> Result<()> {
    let mut rig = GatewayRig::start_with(RigOptions {
        poll_ms: 200,
        flush_ms: 200,
        opcua_limits: Some("max_sessions = 2".into()),
        ..RigOptions::default()
    })
    .await?;
    let version = ["Gateway/Version".to_string()];

    // One other session open: this one is the second, within the limit.
    let answer = rig
        .opcua_client(&version, &["--hold-sessions", "1"])
        .await?;
    assert_eq!(answer["held_sessions"], 1, "{answer}");
    assert_eq!(answer["connected"], true, "{answer}");
    assert_eq!(
        answer["reads"]["Gateway/Version"]["value"],
        env!("CARGO_PKG_VERSION"),
        "{answer}"
    );

    // Two others open: the third is refused, by name.
    let answer = rig
        .opcua_client(&version, &["--hold-sessions", "2"])
        .await?;
    assert_eq!(answer["held_sessions"], 2, "{answer}");
    assert_eq!(answer["connected"], false, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("BadTooManySessions")),
        "{answer}"
    );

    // Once they close, a client gets in again.
    let answer = rig.read_opcua(&version).await?;
    assert_eq!(
        answer["reads"]["Gateway/Version"]["value"],
        env!("CARGO_PKG_VERSION")
    );
    rig.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_publishing_interval_sets_what_a_subscriber_is_granted() -> Result<()> {
    let mut rig = GatewayRig::start_with(RigOptions {
        poll_ms: 50,
        flush_ms: 200,
        opcua_limits: Some("min_publishing_interval_ms = 20".into()),
        ..RigOptions::default()
    })
    .await?;
    // An HMI asking for "as fast as you can" (0) gets the configured
    // minimum, not async-opcua's 100 ms, and its values keep coming.
    let speed = format!("Machines/{MACHINE}/Tags/speed_rpm");
    let answer = rig
        .opcua_client(
            &[],
            &[
                "--subscribe",
                &speed,
                "--count",
                "5",
                "--publishing-interval",
                "0",
            ],
        )
        .await?;
    rig.stop().await;
    assert_eq!(answer["revised_publishing_interval_ms"], 20.0, "{answer}");
    let changes = answer["subscription"].as_array().map_or(0, Vec::len);
    assert!(changes >= 6, "{answer}");
    Ok(())
}
