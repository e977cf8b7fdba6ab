//! The register map over a real Modbus TCP connection: a tokio-modbus client
//! reads every mapped register, decodes it by hand per the byte-order table
//! in the README, and compares with the state the server published.

use std::net::SocketAddr;
use std::time::Duration;

use ironbridge_simulator::{ProcessState, SimOptions, Simulator};
use tokio::task::JoinHandle;
use tokio_modbus::client::Context;
use tokio_modbus::prelude::*;
use tokio_util::sync::CancellationToken;

/// Guards against a hung request (the client has no timeout of its own);
/// not a performance bound.
const HANG_GUARD: Duration = Duration::from_secs(30);

struct Running {
    sim: Simulator,
    address: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), ironbridge_simulator::SimError>>,
}

async fn start(options: SimOptions) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("local address");
    let sim = Simulator::new(options).expect("valid options");
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let (sim, cancel) = (sim.clone(), cancel.clone());
        async move { sim.serve(listener, cancel).await }
    });
    Running {
        sim,
        address,
        cancel,
        task,
    }
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        self.task
            .await
            .expect("server task")
            .expect("server ended cleanly");
    }
}

async fn client(address: SocketAddr, unit: u8) -> Context {
    tcp::connect_slave(address, Slave(unit))
        .await
        .expect("connect")
}

async fn holding(ctx: &mut Context, address: u16, count: u16) -> Vec<u16> {
    let reply = tokio::time::timeout(HANG_GUARD, ctx.read_holding_registers(address, count)).await;
    reply.expect("reply").expect("link").expect("no exception")
}

async fn input(ctx: &mut Context, address: u16, count: u16) -> Vec<u16> {
    let reply = tokio::time::timeout(HANG_GUARD, ctx.read_input_registers(address, count)).await;
    reply.expect("reply").expect("link").expect("no exception")
}

/// What a gateway would decode, done by hand from the byte-order table.
#[derive(Debug, PartialEq)]
struct Decoded {
    speed_rpm: f32,
    motor_current_a: f32,
    run_seconds: u64,
    discharge_pressure_bar: f64,
    bearing_temp_raw: i16,
    vibration_um_s: u32,
    flow_raw: i32,
    running: bool,
    overtemp_alarm: bool,
}

async fn read_all(ctx: &mut Context) -> Decoded {
    let h = holding(ctx, 0, 4).await;
    let run = holding(ctx, 10, 4).await;
    let p = holding(ctx, 20, 4).await;
    let i = input(ctx, 0, 5).await;
    let coil = ctx
        .read_coils(0, 1)
        .await
        .expect("link")
        .expect("no exception");
    let alarm = ctx
        .read_discrete_inputs(0, 1)
        .await
        .expect("link")
        .expect("no exception");

    let join32 = |hi: u16, lo: u16| (u32::from(hi) << 16) | u32::from(lo);
    let join64 = |w: [u16; 4]| w.iter().fold(0u64, |acc, w| (acc << 16) | u64::from(*w));
    Decoded {
        // ABCD: [AB, CD]
        speed_rpm: f32::from_bits(join32(h[0], h[1])),
        // CDAB: [CD, AB]
        motor_current_a: f32::from_bits(join32(h[3], h[2])),
        // BADC, 64 bit: [BA, DC, FE, HG]
        run_seconds: join64([
            run[0].swap_bytes(),
            run[1].swap_bytes(),
            run[2].swap_bytes(),
            run[3].swap_bytes(),
        ]),
        // ABCD, 64 bit: [AB, CD, EF, GH]
        discharge_pressure_bar: f64::from_bits(join64([p[0], p[1], p[2], p[3]])),
        bearing_temp_raw: i[0] as i16,
        // DCBA: [DC, BA]
        vibration_um_s: join32(i[2].swap_bytes(), i[1].swap_bytes()),
        // CDAB: [CD, AB]
        flow_raw: join32(i[4], i[3]) as i32,
        running: coil[0],
        overtemp_alarm: alarm[0],
    }
}

fn expected(state: &ProcessState) -> Decoded {
    Decoded {
        speed_rpm: state.speed_rpm as f32,
        motor_current_a: state.motor_current_a as f32,
        run_seconds: state.run_seconds,
        discharge_pressure_bar: state.discharge_pressure_bar,
        bearing_temp_raw: (state.bearing_temp_c * 10.0).round() as i16,
        vibration_um_s: (state.vibration_mm_s * 1000.0).round() as u32,
        flow_raw: (state.flow_m3_h * 100.0).round() as i32,
        running: state.running,
        overtemp_alarm: state.overtemp_alarm,
    }
}

fn paused_options() -> SimOptions {
    SimOptions {
        seed: 7,
        unit_id: 1,
        // Six simulated minutes per step, so a few steps change every value.
        time_scale: 3600.0,
        step_ms: 100,
        start_paused: true,
        ..SimOptions::default()
    }
}

#[tokio::test]
async fn every_mapped_register_decodes_to_the_published_state() {
    let server = start(paused_options()).await;
    let mut ctx = client(server.address, 1).await;
    let mut seen_running = false;
    let mut seen_stopped = false;
    for _ in 0..40 {
        let snapshot = server.sim.advance(97);
        let decoded = read_all(&mut ctx).await;
        assert_eq!(decoded, expected(&snapshot.state), "step {}", snapshot.step);
        seen_running |= decoded.running;
        seen_stopped |= !decoded.running;
        assert!(decoded.run_seconds > 0);
    }
    assert!(
        seen_running && seen_stopped,
        "the samples cover both running and stopped"
    );
    server.stop().await;
}

#[tokio::test]
async fn unmapped_addresses_answer_illegal_data_address() {
    let server = start(paused_options()).await;
    let mut ctx = client(server.address, 1).await;
    // Gap between the current (2-3) and the run time (10-13).
    let gap = ctx.read_holding_registers(4, 1).await.expect("link");
    assert_eq!(gap, Err(ExceptionCode::IllegalDataAddress));
    // A block that runs from mapped into unmapped registers is refused whole.
    let spanning = ctx.read_holding_registers(0, 24).await.expect("link");
    assert_eq!(spanning, Err(ExceptionCode::IllegalDataAddress));
    let input_past_end = ctx.read_input_registers(5, 1).await.expect("link");
    assert_eq!(input_past_end, Err(ExceptionCode::IllegalDataAddress));
    let coil = ctx.read_coils(1, 1).await.expect("link");
    assert_eq!(coil, Err(ExceptionCode::IllegalDataAddress));
    let discrete = ctx.read_discrete_inputs(100, 1).await.expect("link");
    assert_eq!(discrete, Err(ExceptionCode::IllegalDataAddress));
    // The link survives exceptions.
    assert_eq!(holding(&mut ctx, 0, 2).await.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn writes_are_refused_as_illegal_function() {
    let server = start(paused_options()).await;
    let mut ctx = client(server.address, 1).await;
    let before = server.sim.snapshot();
    let write = ctx.write_single_register(0, 1234).await.expect("link");
    assert_eq!(write, Err(ExceptionCode::IllegalFunction));
    let coil = ctx.write_single_coil(0, false).await.expect("link");
    assert_eq!(coil, Err(ExceptionCode::IllegalFunction));
    assert_eq!(read_all(&mut ctx).await, expected(&before.state));
    server.stop().await;
}

#[tokio::test]
async fn requests_for_another_unit_id_get_gateway_target_device() {
    let server = start(SimOptions {
        unit_id: 3,
        ..paused_options()
    })
    .await;
    let mut wrong = client(server.address, 1).await;
    let reply = wrong.read_holding_registers(0, 2).await.expect("link");
    assert_eq!(reply, Err(ExceptionCode::GatewayTargetDevice));
    let mut right = client(server.address, 3).await;
    assert_eq!(holding(&mut right, 0, 2).await.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn unpaused_simulator_publishes_new_steps_that_clients_read() {
    let server = start(SimOptions {
        start_paused: false,
        step_ms: 10,
        ..paused_options()
    })
    .await;
    let mut updates = server.sim.subscribe();
    let first = server.sim.snapshot().step;
    while updates.borrow_and_update().step < first + 5 {
        tokio::time::timeout(HANG_GUARD, updates.changed())
            .await
            .expect("a step within the guard")
            .expect("simulator alive");
    }
    server.sim.pause();
    let paused_at = server.sim.snapshot();
    let mut ctx = client(server.address, 1).await;
    assert_eq!(read_all(&mut ctx).await, expected(&paused_at.state));
    assert_eq!(
        server.sim.snapshot().step,
        paused_at.step,
        "no step while paused"
    );
    server.stop().await;
}
