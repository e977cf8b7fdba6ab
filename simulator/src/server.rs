//! The simulated pump as a Modbus TCP server.
//!
//! A stepping task advances the [`Process`] every `step_ms` of wall-clock
//! time and publishes a [`Snapshot`]: the state and the register image built
//! from it. Requests are answered from the latest snapshot, so one request
//! never mixes two steps. Tests can [`Simulator::pause`] the stepping (or
//! step by hand with [`Simulator::advance`]) and compare what a client reads
//! with [`Simulator::snapshot`].
//!
//! Faults from [`SimOptions::faults`] act on the link and the replies: a drop
//! closes the listener and every connection, slow faults delay replies, and
//! exception faults answer matching reads with an exception (see
//! [`crate::faults`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

use crate::error::SimError;
use crate::faults::{rebind, Event, FaultClock, FaultSchedule, LinkStatus, Protocol};
use crate::process::{Process, ProcessConfig, ProcessState};
use crate::registers::{RegisterImage, Table};

/// How the simulator runs.
#[derive(Debug, Clone, PartialEq)]
pub struct SimOptions {
    /// Seed of the process; the state sequence (per step) depends only on it,
    /// `time_scale`, `step_ms` and `process`.
    pub seed: u64,
    /// Modbus unit id the device answers to. Requests for any other unit id
    /// get the exception GatewayTargetDevice (0x0B), so a misconfigured
    /// client fails at once instead of waiting for a timeout.
    pub unit_id: u8,
    /// Simulated seconds per wall-clock second. Everything (duty cycle,
    /// temperatures, wear, run time) runs at this rate, so the sensors keep
    /// the same relation to wear as in a recording.
    pub time_scale: f64,
    /// Wall-clock milliseconds between steps; each step advances the process
    /// by `step_ms × time_scale` simulated milliseconds.
    pub step_ms: u64,
    /// Start with stepping paused (see [`Simulator::resume`]).
    pub start_paused: bool,
    pub process: ProcessConfig,
    /// Network faults to show (drop, slow, exception); empty by default.
    pub faults: FaultSchedule,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            seed: 7,
            unit_id: 1,
            time_scale: 1.0,
            step_ms: 100,
            start_paused: false,
            process: ProcessConfig::default(),
            faults: FaultSchedule::default(),
        }
    }
}

impl SimOptions {
    /// Simulated seconds per step.
    pub fn step_seconds(&self) -> f64 {
        self.step_ms as f64 / 1000.0 * self.time_scale
    }

    fn validate(&self) -> Result<(), SimError> {
        if self.step_ms == 0 {
            return Err(SimError::InvalidOption {
                name: "step_ms",
                reason: "must be at least 1".into(),
            });
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return Err(SimError::InvalidOption {
                name: "time_scale",
                reason: format!("must be a positive number, got {}", self.time_scale),
            });
        }
        if !(0.0..=1.0).contains(&self.process.initial_wear) {
            return Err(SimError::InvalidOption {
                name: "initial_wear",
                reason: format!("must be in [0, 1], got {}", self.process.initial_wear),
            });
        }
        self.faults.check_protocol(Protocol::ModbusTcp)
    }
}

/// One published step: what the registers show and the state they encode.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Steps taken since start (0 = initial state).
    pub step: u64,
    pub state: ProcessState,
    pub image: RegisterImage,
}

impl Snapshot {
    fn of(step: u64, state: &ProcessState) -> Self {
        Self {
            step,
            state: state.clone(),
            image: RegisterImage::from_state(state),
        }
    }
}

struct Stepper {
    process: Process,
    step: u64,
    paused: bool,
}

struct Shared {
    options: SimOptions,
    // Stepping and publishing happen under this lock, so after `pause`
    // returns no further step is published.
    stepper: Mutex<Stepper>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    link: watch::Sender<LinkStatus>,
    /// Decides which requests a partial (`percent` < 100) exception fault
    /// hits; seeded, so a run is repeatable request by request.
    exception_draws: Mutex<StdRng>,
}

/// A simulated pump: process, stepping and Modbus service. Cheap to clone
/// (all clones drive the same machine).
#[derive(Clone)]
pub struct Simulator {
    shared: Arc<Shared>,
}

impl Simulator {
    pub fn new(options: SimOptions) -> Result<Self, SimError> {
        options.validate()?;
        let process = Process::new(options.seed, options.process.clone());
        let first = Arc::new(Snapshot::of(0, process.state()));
        let stepper = Stepper {
            process,
            step: 0,
            paused: options.start_paused,
        };
        Ok(Self {
            shared: Arc::new(Shared {
                stepper: Mutex::new(stepper),
                snapshots: watch::Sender::new(first),
                link: watch::Sender::new(LinkStatus::default()),
                exception_draws: Mutex::new(StdRng::seed_from_u64(
                    options.seed ^ EXCEPTION_SEED_SALT,
                )),
                options,
            }),
        })
    }

    pub fn options(&self) -> &SimOptions {
        &self.shared.options
    }

    /// The snapshot the registers currently show.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshots.borrow().clone()
    }

    /// Notified on every published step.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.shared.snapshots.subscribe()
    }

    /// Whether the link is up (not in a drop fault) and how many drops began.
    pub fn link_status(&self) -> watch::Receiver<LinkStatus> {
        self.shared.link.subscribe()
    }

    /// Stops the timed stepping; the registers keep the current snapshot.
    pub fn pause(&self) {
        self.lock_stepper().paused = true;
    }

    /// Restarts the timed stepping.
    pub fn resume(&self) {
        self.lock_stepper().paused = false;
    }

    /// Takes `steps` steps now (paused or not) and returns the snapshot
    /// published after the last one.
    pub fn advance(&self, steps: u64) -> Arc<Snapshot> {
        let mut stepper = self.lock_stepper();
        for _ in 0..steps {
            self.step_locked(&mut stepper);
        }
        self.snapshot()
    }

    /// Serves Modbus TCP on `listener` and steps the process until `cancel`
    /// fires; open connections are closed on return. A drop fault closes
    /// `listener` and binds its address again when the drop ends.
    pub async fn serve(
        &self,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> Result<(), SimError> {
        let clock = FaultClock::start();
        let result = tokio::select! {
            () = cancel.cancelled() => Ok(()),
            () = self.run_stepping() => Ok(()),
            result = self.run_link(listener, clock) => result,
        };
        self.shared.link.send_modify(|link| link.up = false);
        result
    }

    /// Serves connections while the link is up and sits out drop faults.
    async fn run_link(&self, listener: TcpListener, clock: FaultClock) -> Result<(), SimError> {
        let addr = listener.local_addr().map_err(SimError::Serve)?;
        let mut timeline = self.shared.options.faults.timeline();
        let mut next_listener = Some(listener);
        loop {
            let listener = match next_listener.take() {
                Some(listener) => listener,
                None => rebind(addr).await?,
            };
            let service = PumpService {
                shared: Arc::clone(&self.shared),
                clock,
            };
            let new_service = move |_peer| Ok(Some(service.clone()));
            let on_connected = |stream, peer| {
                let new_service = new_service.clone();
                async move { accept_tcp_connection(stream, peer, new_service) }
            };
            let on_process_error =
                |err| tracing::debug!(%err, "Modbus connection ended with an error");
            let server = Server::new(listener);
            self.shared.link.send_modify(|link| link.up = true);
            tokio::select! {
                result = server.serve(&on_connected, on_process_error) => {
                    return result.map_err(SimError::Serve);
                }
                () = clock.sleep_until_s(timeline.next_at()) => {}
            }
            // The serve future is gone, and with it every connection task;
            // dropping the server closes the listener, so connects are refused.
            drop(server);

            let mut down_until = clock.now_s();
            loop {
                while let Some((at, event)) = timeline.pop_due(down_until.max(clock.now_s())) {
                    if let Event::Drop { for_s } = event {
                        down_until = down_until.max(at + for_s);
                        self.shared.link.send_modify(|link| {
                            link.up = false;
                            link.drops += 1;
                        });
                    }
                }
                if clock.now_s() >= down_until {
                    break;
                }
                tracing::info!(%addr, until_s = down_until, "Modbus link down (drop fault)");
                clock.sleep_until_s(Some(down_until)).await;
            }
            tracing::info!(%addr, "Modbus link up again");
        }
    }

    async fn run_stepping(&self) {
        let mut ticks = tokio::time::interval(Duration::from_millis(self.shared.options.step_ms));
        // A late tick must not burst several steps: keep the step rate steady.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let mut stepper = self.lock_stepper();
            if !stepper.paused {
                self.step_locked(&mut stepper);
            }
        }
    }

    fn step_locked(&self, stepper: &mut Stepper) {
        let state = stepper
            .process
            .step(self.shared.options.step_seconds())
            .clone();
        stepper.step += 1;
        self.shared
            .snapshots
            .send_replace(Arc::new(Snapshot::of(stepper.step, &state)));
    }

    fn lock_stepper(&self) -> MutexGuard<'_, Stepper> {
        // A panic while stepping leaves a consistent process behind (every
        // step is published whole or not at all), so a poisoned lock is usable.
        self.shared
            .stepper
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs a simulator with `options` on `listener` until `cancel` fires.
///
/// For access to the published state (pause, advance, snapshot) create a
/// [`Simulator`] and call [`Simulator::serve`] instead.
pub async fn serve(
    listener: TcpListener,
    options: SimOptions,
    cancel: CancellationToken,
) -> Result<(), SimError> {
    Simulator::new(options)?.serve(listener, cancel).await
}

/// Salt for the exception-fault generator, so its draws are not the
/// process's own random sequence.
const EXCEPTION_SEED_SALT: u64 = 0x5EED_FA17_0000_0006;

#[derive(Clone)]
struct PumpService {
    shared: Arc<Shared>,
    clock: FaultClock,
}

impl PumpService {
    fn answer(&self, request: &Request<'_>) -> Result<Response, ExceptionCode> {
        let snapshot = self.shared.snapshots.borrow().clone();
        let image = &snapshot.image;
        match *request {
            Request::ReadHoldingRegisters(address, count) => image
                .read_registers(Table::Holding, address, count)
                .map(Response::ReadHoldingRegisters),
            Request::ReadInputRegisters(address, count) => image
                .read_registers(Table::Input, address, count)
                .map(Response::ReadInputRegisters),
            Request::ReadCoils(address, count) => image
                .read_bits(Table::Coil, address, count)
                .map(Response::ReadCoils),
            Request::ReadDiscreteInputs(address, count) => image
                .read_bits(Table::DiscreteInput, address, count)
                .map(Response::ReadDiscreteInputs),
            // A read-only machine: writes and everything else are refused.
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    /// The exception an exception fault puts in place of the answer, if any.
    fn injected_exception(&self, t_s: f64, unit_id: u8, request: &Request<'_>) -> Option<u8> {
        let (table, address, count) = match *request {
            Request::ReadHoldingRegisters(address, count) => (Table::Holding, address, count),
            Request::ReadInputRegisters(address, count) => (Table::Input, address, count),
            Request::ReadCoils(address, count) => (Table::Coil, address, count),
            Request::ReadDiscreteInputs(address, count) => (Table::DiscreteInput, address, count),
            _ => return None,
        };
        let faults = &self.shared.options.faults;
        for (code, percent) in faults.exceptions_for(t_s, unit_id, table, address, count) {
            let hit = percent >= 100.0 || {
                let mut draws = self
                    .shared
                    .exception_draws
                    .lock()
                    // The generator only picks requests; any state will do.
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                draws.random_bool(percent / 100.0)
            };
            if hit {
                return Some(code);
            }
        }
        None
    }

    fn respond(&self, t_s: f64, request: &SlaveRequest<'_>) -> Result<Response, ExceptionCode> {
        if request.slave != self.shared.options.unit_id {
            return Err(ExceptionCode::GatewayTargetDevice);
        }
        if let Some(code) = self.injected_exception(t_s, request.slave, &request.request) {
            return Err(ExceptionCode::new(code));
        }
        self.answer(&request.request)
    }
}

impl Service for PumpService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        if !self.shared.link.borrow().up {
            // A drop began and this connection is being closed: a request
            // that slipped in first must not be answered.
            return Box::pin(std::future::pending());
        }
        let t_s = self.clock.now_s();
        match self.shared.options.faults.reply_delay(t_s, request.slave) {
            None => Box::pin(std::future::ready(self.respond(t_s, &request))),
            Some(delay) => {
                let service = self.clone();
                Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    // Answered from the state at reply time, as a slow
                    // device would.
                    service.respond(t_s, &request)
                })
            }
        }
    }
}
