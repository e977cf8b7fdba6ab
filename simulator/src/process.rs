//! The physical process: a centrifugal pump on a variable-speed motor whose
//! bearing wears out slowly.
//!
//! Everything is deterministic for a seed: one `StdRng` drives the duty
//! cycle, the wear noise and the measurement noise, and `step(dt)` is the only
//! way time moves. The integration is exact for piecewise-constant inputs
//! (exponential lags), so large steps (minutes, for recording or a fast
//! `time_scale`) give the same dynamics as small ones.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Speed at which the pump delivers its rated head and flow (2-pole motor, 50 Hz).
pub const NOMINAL_SPEED_RPM: f64 = 2950.0;
/// Bearing temperature at which the overtemp alarm is raised.
pub const OVERTEMP_ON_C: f64 = 85.0;
/// Temperature below which a raised overtemp alarm clears (hysteresis, so a
/// temperature hovering at the limit does not make the alarm chatter).
pub const OVERTEMP_OFF_C: f64 = 80.0;

/// Duty-cycle setpoints of the variable-speed drive.
const SETPOINTS_RPM: [f64; 4] = [1480.0, 1980.0, 2450.0, NOMINAL_SPEED_RPM];
/// Drive acceleration/deceleration ramp.
const RAMP_RPM_PER_S: f64 = 150.0;
/// Thermal time constant of the bearing housing.
const THERMAL_TAU_S: f64 = 900.0;
/// Base wear rate at full speed, 60 °C and a new bearing: chosen so that a
/// bearing lasts a few hundred operating hours under the duty cycle (short,
/// so a recording covers several lifetimes).
const WEAR_RATE_PER_S: f64 = 1.0e-6;
/// How long the pump stands still while a failed bearing is replaced.
const MAINTENANCE_S: f64 = 8.0 * 3600.0;

/// Tunables of the process that a user may want to vary.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessConfig {
    /// Wear of the bearing at start, in [0, 1].
    pub initial_wear: f64,
    /// Mean ambient temperature; a ±5 °C daily cycle is added.
    pub ambient_c: f64,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            initial_wear: 0.05,
            ambient_c: 25.0,
        }
    }
}

/// What the machine's sensors show at one instant, plus the hidden truth.
///
/// Sensor fields are measured values (with noise and sensor resolution);
/// `bearing_wear` is the ground truth a model should predict and is not
/// exposed over Modbus.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessState {
    /// Simulated seconds since the process started.
    pub time_s: f64,
    pub running: bool,
    pub speed_rpm: f64,
    pub motor_current_a: f64,
    pub bearing_temp_c: f64,
    /// Vibration velocity, RMS.
    pub vibration_mm_s: f64,
    pub discharge_pressure_bar: f64,
    pub flow_m3_h: f64,
    /// Operating-hours counter, in whole seconds of running.
    pub run_seconds: u64,
    pub overtemp_alarm: bool,
    /// Ground truth in [0, 1]; 1 = bearing failed.
    pub bearing_wear: f64,
    /// Bearings replaced so far (each time wear reached 1).
    pub bearings_replaced: u32,
}

/// The pump with its drive schedule, thermal state and bearing.
#[derive(Debug, Clone)]
pub struct Process {
    rng: StdRng,
    config: ProcessConfig,
    time_s: f64,
    setpoint_rpm: f64,
    segment_left_s: f64,
    maintenance_left_s: f64,
    speed_rpm: f64,
    bearing_temp_c: f64,
    wear: f64,
    run_seconds: f64,
    overtemp_alarm: bool,
    bearings_replaced: u32,
    measured: ProcessState,
}

impl Process {
    pub fn new(seed: u64, config: ProcessConfig) -> Self {
        let wear = config.initial_wear.clamp(0.0, 1.0);
        let ambient = ambient_at(config.ambient_c, 0.0);
        let mut process = Self {
            rng: StdRng::seed_from_u64(seed),
            config,
            time_s: 0.0,
            setpoint_rpm: 0.0,
            segment_left_s: 0.0,
            maintenance_left_s: 0.0,
            speed_rpm: 0.0,
            bearing_temp_c: ambient,
            wear,
            run_seconds: 0.0,
            overtemp_alarm: false,
            bearings_replaced: 0,
            measured: ProcessState {
                time_s: 0.0,
                running: false,
                speed_rpm: 0.0,
                motor_current_a: 0.0,
                bearing_temp_c: ambient,
                vibration_mm_s: 0.0,
                discharge_pressure_bar: 0.0,
                flow_m3_h: 0.0,
                run_seconds: 0,
                overtemp_alarm: false,
                bearing_wear: wear,
                bearings_replaced: 0,
            },
        };
        // Start with the drive already at its first setpoint, so a fresh
        // simulator shows a running machine rather than a long ramp.
        process.next_segment();
        process.speed_rpm = process.setpoint_rpm;
        process.measure();
        process
    }

    /// The latest measurement.
    pub fn state(&self) -> &ProcessState {
        &self.measured
    }

    /// Advances the process by `dt_s` simulated seconds and takes a new
    /// measurement. Non-positive or non-finite steps only re-measure.
    pub fn step(&mut self, dt_s: f64) -> &ProcessState {
        let dt = if dt_s.is_finite() && dt_s > 0.0 {
            dt_s
        } else {
            0.0
        };
        self.time_s += dt;

        if self.maintenance_left_s > 0.0 {
            self.maintenance_left_s -= dt;
            if self.maintenance_left_s <= 0.0 {
                self.maintenance_left_s = 0.0;
                // A new bearing is never perfect: small run-in wear.
                self.wear = self.rng.random_range(0.0..0.03);
                self.bearings_replaced += 1;
                self.next_segment();
            }
        } else {
            self.segment_left_s -= dt;
            if self.segment_left_s <= 0.0 {
                self.next_segment();
            }
        }

        let max_change = RAMP_RPM_PER_S * dt;
        let error = self.setpoint_rpm - self.speed_rpm;
        self.speed_rpm += error.clamp(-max_change, max_change);

        let load = self.speed_rpm / NOMINAL_SPEED_RPM;
        let running = self.speed_rpm > 1.0;

        if running && self.maintenance_left_s <= 0.0 {
            // Radial load grows with speed²; hot grease lubricates worse
            // (doubling every 15 °C); a damaged raceway damages itself faster.
            let temp_factor = 2f64.powf((self.bearing_temp_c - 60.0) / 15.0);
            let rate = WEAR_RATE_PER_S * load * load * temp_factor * (1.0 + 3.0 * self.wear);
            let jitter = (1.0 + 0.5 * self.normal()).max(0.0);
            self.wear += rate * dt * jitter;
            if self.wear >= 1.0 {
                // Bearing failure trips the pump; it stays down for the repair.
                self.wear = 1.0;
                self.maintenance_left_s = MAINTENANCE_S;
                self.setpoint_rpm = 0.0;
                self.speed_rpm = 0.0;
            }
            self.run_seconds += dt;
        }

        let running = self.speed_rpm > 1.0;
        let load = self.speed_rpm / NOMINAL_SPEED_RPM;
        let ambient = ambient_at(self.config.ambient_c, self.time_s);
        let heating = if running {
            18.0 * load * load + 45.0 * self.wear * self.wear * load
        } else {
            0.0
        };
        let target = ambient + heating;
        let approach = 1.0 - (-dt / THERMAL_TAU_S).exp();
        self.bearing_temp_c += (target - self.bearing_temp_c) * approach;

        self.measure();
        &self.measured
    }

    fn next_segment(&mut self) {
        if self.rng.random_bool(0.12) {
            self.setpoint_rpm = 0.0;
            self.segment_left_s = self.rng.random_range(0.25..2.0) * 3600.0;
        } else {
            let index = self.rng.random_range(0..SETPOINTS_RPM.len());
            self.setpoint_rpm = SETPOINTS_RPM[index];
            self.segment_left_s = self.rng.random_range(0.5..6.0) * 3600.0;
        }
    }

    fn measure(&mut self) {
        let running = self.speed_rpm > 1.0;
        let load = self.speed_rpm / NOMINAL_SPEED_RPM;
        let wear = self.wear;

        let speed = if running {
            quantize(self.speed_rpm + 3.0 * self.normal(), 0.1)
        } else {
            0.0
        };
        // Magnetizing current, hydraulic power (∝ n³), bearing friction.
        let current = if running {
            3.5 + 24.0 * load.powi(3) + 4.0 * wear * load + 0.15 * self.normal()
        } else {
            0.0
        };
        // Vibration: residual unbalance plus a bearing term that stays
        // invisible while the damage is small and then grows quickly.
        let vibration = if running {
            let clean = 0.8 * load + 9.0 * wear.powf(2.5) * load * load;
            clean * (1.0 + 0.05 * self.normal()) + 0.03 * self.normal()
        } else {
            0.02 * self.normal().abs()
        };
        // Suction head 0.5 bar; pump head ∝ n² (affinity laws).
        let pressure = 0.5 + 5.5 * load * load + 0.02 * self.normal();
        let flow = if running {
            120.0 * load + 0.5 * self.normal()
        } else {
            0.0
        };
        let temp = self.bearing_temp_c + 0.2 * self.normal();

        if temp >= OVERTEMP_ON_C {
            self.overtemp_alarm = true;
        } else if temp < OVERTEMP_OFF_C {
            self.overtemp_alarm = false;
        }

        self.measured = ProcessState {
            time_s: self.time_s,
            running,
            speed_rpm: speed.max(0.0),
            motor_current_a: quantize(current.max(0.0), 0.01),
            bearing_temp_c: temp,
            vibration_mm_s: vibration.max(0.0),
            discharge_pressure_bar: quantize(pressure.max(0.0), 0.001),
            flow_m3_h: flow.max(0.0),
            run_seconds: self.run_seconds as u64,
            overtemp_alarm: self.overtemp_alarm,
            bearing_wear: wear,
            bearings_replaced: self.bearings_replaced,
        };
    }

    /// Standard normal sample (Box–Muller; rand 0.9 has no distributions).
    fn normal(&mut self) -> f64 {
        let u1: f64 = self.rng.random_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = self.rng.random();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

fn ambient_at(mean_c: f64, time_s: f64) -> f64 {
    mean_c + 5.0 * (std::f64::consts::TAU * time_s / 86_400.0).sin()
}

/// Rounds to the sensor's resolution.
fn quantize(value: f64, resolution: f64) -> f64 {
    (value / resolution).round() * resolution
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seed: u64, steps: usize, dt: f64) -> Vec<ProcessState> {
        let mut process = Process::new(seed, ProcessConfig::default());
        (0..steps).map(|_| process.step(dt).clone()).collect()
    }

    #[test]
    fn same_seed_gives_the_same_states_and_different_seeds_differ() {
        assert_eq!(run(7, 2000, 60.0), run(7, 2000, 60.0));
        assert_ne!(run(7, 2000, 60.0), run(8, 2000, 60.0));
    }

    #[test]
    fn wear_never_decreases_except_when_the_bearing_is_replaced() {
        let states = run(3, 40_000, 120.0);
        for pair in states.windows(2) {
            if pair[1].bearings_replaced == pair[0].bearings_replaced {
                assert!(pair[1].bearing_wear >= pair[0].bearing_wear);
            }
            assert!((0.0..=1.0).contains(&pair[1].bearing_wear));
        }
        assert!(
            states.last().map(|s| s.bearings_replaced).unwrap_or(0) >= 2,
            "several bearing lifetimes expected in ~1300 h"
        );
    }

    #[test]
    fn stopped_pump_reads_zero_speed_current_and_flow() {
        let states = run(11, 20_000, 60.0);
        let stopped: Vec<_> = states.iter().filter(|s| !s.running).collect();
        assert!(!stopped.is_empty(), "the duty cycle includes stops");
        for s in stopped {
            assert_eq!(s.speed_rpm, 0.0);
            assert_eq!(s.motor_current_a, 0.0);
            assert_eq!(s.flow_m3_h, 0.0);
        }
    }

    #[test]
    fn pressure_rises_with_the_square_of_speed() {
        let states = run(5, 20_000, 60.0);
        let at = |rpm: f64| {
            let near: Vec<f64> = states
                .iter()
                .filter(|s| s.running && (s.speed_rpm - rpm).abs() < 20.0)
                .map(|s| s.discharge_pressure_bar - 0.5)
                .collect();
            near.iter().sum::<f64>() / near.len() as f64
        };
        let ratio = at(NOMINAL_SPEED_RPM) / at(1480.0);
        let expected = (NOMINAL_SPEED_RPM / 1480.0).powi(2);
        assert!((ratio - expected).abs() < 0.1 * expected, "ratio {ratio}");
    }

    #[test]
    fn overtemp_alarm_follows_the_bearing_temperature_with_hysteresis() {
        let states = run(7, 40_000, 120.0);
        assert!(
            states.iter().any(|s| s.overtemp_alarm),
            "a worn bearing at full speed overheats"
        );
        for s in &states {
            if s.bearing_temp_c >= OVERTEMP_ON_C {
                assert!(s.overtemp_alarm);
            }
            if s.bearing_temp_c < OVERTEMP_OFF_C {
                assert!(!s.overtemp_alarm);
            }
        }
    }
}
