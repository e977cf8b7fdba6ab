//! The second physical process: a machine-tool motor spindle whose
//! bearings degrade slowly.
//!
//! Same style as the pump ([`crate::process`]): one seeded `StdRng` drives
//! the job schedule, the degradation noise and the measurement noise, and
//! `step(dt)` is the only way time moves. Lags are integrated exactly for
//! piecewise-constant inputs, so a 100 ms step and a one-minute step follow
//! the same physics (what a large `time_scale` relies on).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Highest speed of the spindle (a 15 kW, 18 000 rpm motor spindle).
pub const MAX_SPEED_RPM: f64 = 18_000.0;
/// Bearing temperature at which the overtemp alarm is raised.
pub const OVERTEMP_ON_C: f64 = 70.0;
/// Temperature below which a raised overtemp alarm clears (hysteresis, so a
/// temperature hovering at the limit does not make the alarm chatter).
pub const OVERTEMP_OFF_C: f64 = 65.0;
/// Degradation at which the fault label turns from healthy to incipient.
pub const INCIPIENT_AT: f64 = 0.3;
/// Degradation at which the fault label turns from incipient to severe.
pub const SEVERE_AT: f64 = 0.6;

/// Speeds the machining programs use.
const SETPOINTS_RPM: [f64; 5] = [4_000.0, 8_000.0, 12_000.0, 15_000.0, MAX_SPEED_RPM];
/// Acceleration/deceleration of the spindle drive.
const RAMP_RPM_PER_S: f64 = 3_000.0;
/// Thermal time constant of the bearing cartridge (liquid-cooled housing).
const THERMAL_TAU_S: f64 = 600.0;
/// Base degradation rate: chosen so that a set of bearings lasts a few
/// hundred operating hours (short, so a recording or a fast demo covers
/// several lifetimes).
const DEGRADATION_RATE_PER_S: f64 = 8.0e-7;
/// How long the spindle stands still while its bearings are replaced.
const MAINTENANCE_S: f64 = 4.0 * 3600.0;

/// Tunables of the spindle a user may want to vary.
#[derive(Debug, Clone, PartialEq)]
pub struct SpindleConfig {
    /// Bearing degradation at start, in [0, 1].
    pub initial_degradation: f64,
    /// Mean temperature of the shop floor; a ±3 °C daily cycle is added.
    pub ambient_c: f64,
    /// How strongly bearing damage shows in vibration and heat (1: the
    /// bearings the example model was trained on). Another bearing make
    /// wears differently: a model trained on the old one misjudges it, and
    /// a version trained on a new recording should do better.
    pub bearing_signature: f64,
}

impl Default for SpindleConfig {
    fn default() -> Self {
        Self {
            initial_degradation: 0.05,
            ambient_c: 22.0,
            bearing_signature: 1.0,
        }
    }
}

/// The true condition of the bearings, as a label for judging models.
///
/// Derived from the hidden degradation: healthy below [`INCIPIENT_AT`],
/// incipient below [`SEVERE_AT`], severe below 1, failed while the spindle
/// stands for the bearing replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultState {
    Healthy,
    Incipient,
    Severe,
    Failed,
}

impl FaultState {
    /// The number served as `Spindle.Label.FaultState` (0…3).
    pub fn code(self) -> i32 {
        match self {
            FaultState::Healthy => 0,
            FaultState::Incipient => 1,
            FaultState::Severe => 2,
            FaultState::Failed => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultState::Healthy => "healthy",
            FaultState::Incipient => "incipient",
            FaultState::Severe => "severe",
            FaultState::Failed => "failed",
        }
    }
}

/// What the spindle's sensors show at one instant, plus the hidden truth.
#[derive(Debug, Clone, PartialEq)]
pub struct SpindleState {
    /// Simulated seconds since the process started.
    pub time_s: f64,
    pub running: bool,
    /// What the program commands; the speed follows it on a ramp.
    pub speed_setpoint_rpm: f64,
    pub speed_rpm: f64,
    /// Spindle load in % of rated torque (what a CNC shows as "spindle load").
    pub load_pct: f64,
    pub motor_current_a: f64,
    pub bearing_temp_c: f64,
    /// Vibration velocity at the front bearing, RMS.
    pub vibration_mm_s: f64,
    /// Operating-hours counter.
    pub run_hours: f64,
    pub overtemp_alarm: bool,
    /// Ground truth in [0, 1]; 1 = bearings failed.
    pub bearing_degradation: f64,
    /// Ground-truth label derived from the degradation.
    pub fault_state: FaultState,
    /// Bearing sets replaced so far.
    pub bearings_replaced: u32,
}

/// The spindle with its job schedule, thermal state and bearings.
#[derive(Debug, Clone)]
pub struct Spindle {
    rng: StdRng,
    config: SpindleConfig,
    time_s: f64,
    setpoint_rpm: f64,
    /// Cutting load of the current job, % of rated torque.
    cutting_load_pct: f64,
    segment_left_s: f64,
    maintenance_left_s: f64,
    speed_rpm: f64,
    bearing_temp_c: f64,
    degradation: f64,
    run_seconds: f64,
    overtemp_alarm: bool,
    bearings_replaced: u32,
    measured: SpindleState,
}

impl Spindle {
    pub fn new(seed: u64, config: SpindleConfig) -> Self {
        let degradation = config.initial_degradation.clamp(0.0, 1.0);
        let ambient = ambient_at(config.ambient_c, 0.0);
        let mut spindle = Self {
            rng: StdRng::seed_from_u64(seed),
            config,
            time_s: 0.0,
            setpoint_rpm: 0.0,
            cutting_load_pct: 0.0,
            segment_left_s: 0.0,
            maintenance_left_s: 0.0,
            speed_rpm: 0.0,
            bearing_temp_c: ambient,
            degradation,
            run_seconds: 0.0,
            overtemp_alarm: false,
            bearings_replaced: 0,
            measured: SpindleState {
                time_s: 0.0,
                running: false,
                speed_setpoint_rpm: 0.0,
                speed_rpm: 0.0,
                load_pct: 0.0,
                motor_current_a: 0.0,
                bearing_temp_c: ambient,
                vibration_mm_s: 0.0,
                run_hours: 0.0,
                overtemp_alarm: false,
                bearing_degradation: degradation,
                fault_state: label(degradation, false),
                bearings_replaced: 0,
            },
        };
        // Start inside a running job, so a fresh simulator shows a machining
        // spindle rather than a ramp from standstill.
        spindle.next_segment(false);
        spindle.speed_rpm = spindle.setpoint_rpm;
        spindle.measure();
        spindle
    }

    /// The latest measurement.
    pub fn state(&self) -> &SpindleState {
        &self.measured
    }

    /// Advances the spindle by `dt_s` simulated seconds and takes a new
    /// measurement. Non-positive or non-finite steps only re-measure.
    pub fn step(&mut self, dt_s: f64) -> &SpindleState {
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
                // New bearings are never perfect: small run-in degradation.
                self.degradation = self.rng.random_range(0.0..0.03);
                self.bearings_replaced += 1;
                self.next_segment(false);
            }
        } else {
            self.segment_left_s -= dt;
            if self.segment_left_s <= 0.0 {
                self.next_segment(true);
            }
        }

        let max_change = RAMP_RPM_PER_S * dt;
        let error = self.setpoint_rpm - self.speed_rpm;
        self.speed_rpm += error.clamp(-max_change, max_change);

        let relative_speed = self.speed_rpm / MAX_SPEED_RPM;
        let running = self.speed_rpm > 1.0;
        if running && self.maintenance_left_s <= 0.0 {
            // High speed (centrifugal ball load), heavy cuts and hot grease
            // (doubling every 12 °C) wear the raceways; a damaged raceway
            // damages itself faster.
            let temp_factor = 2f64.powf((self.bearing_temp_c - 45.0) / 12.0);
            let load_factor = 0.5 + self.cutting_load_pct / 100.0;
            let rate = DEGRADATION_RATE_PER_S
                * relative_speed.powf(1.5)
                * load_factor
                * temp_factor
                * (1.0 + 4.0 * self.degradation);
            let jitter = (1.0 + 0.5 * self.normal()).max(0.0);
            self.degradation += rate * dt * jitter;
            if self.degradation >= 1.0 {
                // A seized bearing trips the drive; the spindle stays down
                // for the replacement.
                self.degradation = 1.0;
                self.maintenance_left_s = MAINTENANCE_S;
                self.setpoint_rpm = 0.0;
                self.cutting_load_pct = 0.0;
                self.speed_rpm = 0.0;
            }
            self.run_seconds += dt;
        }

        let running = self.speed_rpm > 1.0;
        let relative_speed = self.speed_rpm / MAX_SPEED_RPM;
        let ambient = ambient_at(self.config.ambient_c, self.time_s);
        let heating = if running {
            25.0 * relative_speed.powf(1.5)
                + 4.0 * self.cutting_load_pct / 100.0
                + 35.0
                    * self.config.bearing_signature
                    * self.degradation
                    * self.degradation
                    * relative_speed
        } else {
            0.0
        };
        let target = ambient + heating;
        let approach = 1.0 - (-dt / THERMAL_TAU_S).exp();
        self.bearing_temp_c += (target - self.bearing_temp_c) * approach;

        self.measure();
        &self.measured
    }

    /// Picks the next job (or a pause for a tool or part change).
    fn next_segment(&mut self, allow_pause: bool) {
        if allow_pause && self.rng.random_bool(0.2) {
            self.setpoint_rpm = 0.0;
            self.cutting_load_pct = 0.0;
            self.segment_left_s = self.rng.random_range(0.5..5.0) * 60.0;
        } else {
            let index = self.rng.random_range(0..SETPOINTS_RPM.len());
            self.setpoint_rpm = SETPOINTS_RPM[index];
            self.cutting_load_pct = self.rng.random_range(15.0..85.0);
            self.segment_left_s = self.rng.random_range(2.0..30.0) * 60.0;
        }
    }

    fn measure(&mut self) {
        let running = self.speed_rpm > 1.0;
        let relative_speed = self.speed_rpm / MAX_SPEED_RPM;
        let degradation = self.degradation;

        let speed = if running {
            quantize(self.speed_rpm + 5.0 * self.normal(), 1.0)
        } else {
            0.0
        };
        // Bearing drag grows with the damage and shows as extra load.
        let load = if running {
            self.cutting_load_pct + 3.0 + 15.0 * degradation * relative_speed + 1.5 * self.normal()
        } else {
            0.0
        };
        // Magnetizing current plus a torque-proportional part.
        let current = if running {
            6.0 + 28.0 * load.max(0.0) / 100.0 + 0.2 * self.normal()
        } else {
            0.0
        };
        // Residual unbalance (∝ n²), the cut itself, and a bearing-defect
        // term that stays hidden while the damage is small.
        let vibration = if running {
            let clean = 0.3
                + 1.2 * relative_speed * relative_speed
                + 0.5 * self.cutting_load_pct / 100.0
                + 8.0 * self.config.bearing_signature * degradation.powf(2.5) * relative_speed;
            clean * (1.0 + 0.05 * self.normal()) + 0.02 * self.normal()
        } else {
            0.02 * self.normal().abs()
        };
        let temp = quantize(self.bearing_temp_c + 0.1 * self.normal(), 0.1);

        if temp >= OVERTEMP_ON_C {
            self.overtemp_alarm = true;
        } else if temp < OVERTEMP_OFF_C {
            self.overtemp_alarm = false;
        }

        self.measured = SpindleState {
            time_s: self.time_s,
            running,
            speed_setpoint_rpm: self.setpoint_rpm,
            speed_rpm: speed.max(0.0),
            load_pct: quantize(load.max(0.0), 0.1),
            motor_current_a: quantize(current.max(0.0), 0.01),
            bearing_temp_c: temp,
            vibration_mm_s: quantize(vibration.max(0.0), 0.001),
            run_hours: self.run_seconds / 3600.0,
            overtemp_alarm: self.overtemp_alarm,
            bearing_degradation: degradation,
            fault_state: label(degradation, self.maintenance_left_s > 0.0),
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

fn label(degradation: f64, in_maintenance: bool) -> FaultState {
    if in_maintenance || degradation >= 1.0 {
        FaultState::Failed
    } else if degradation >= SEVERE_AT {
        FaultState::Severe
    } else if degradation >= INCIPIENT_AT {
        FaultState::Incipient
    } else {
        FaultState::Healthy
    }
}

fn ambient_at(mean_c: f64, time_s: f64) -> f64 {
    mean_c + 3.0 * (std::f64::consts::TAU * time_s / 86_400.0).sin()
}

/// Rounds to the sensor's resolution: the double nearest to the decimal
/// the sensor shows (65.3, not 653 × 0.1 = 65.30000000000001), so a client
/// printing what it read gets the sensor's digits back.
fn quantize(value: f64, resolution: f64) -> f64 {
    let steps_per_unit = (1.0 / resolution).round();
    (value * steps_per_unit).round() / steps_per_unit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seed: u64, steps: usize, dt: f64) -> Vec<SpindleState> {
        let mut spindle = Spindle::new(seed, SpindleConfig::default());
        (0..steps).map(|_| spindle.step(dt).clone()).collect()
    }

    #[test]
    fn same_seed_gives_the_same_states_and_different_seeds_differ() {
        assert_eq!(run(7, 2000, 60.0), run(7, 2000, 60.0));
        assert_ne!(run(7, 2000, 60.0), run(8, 2000, 60.0));
    }

    #[test]
    fn degradation_grows_until_the_bearings_are_replaced() {
        // 60 000 steps of 60 s: about 1000 simulated hours.
        let states = run(3, 60_000, 60.0);
        for pair in states.windows(2) {
            if pair[1].bearings_replaced == pair[0].bearings_replaced {
                assert!(pair[1].bearing_degradation >= pair[0].bearing_degradation);
            }
            assert!((0.0..=1.0).contains(&pair[1].bearing_degradation));
        }
        let replaced = states.last().map(|s| s.bearings_replaced).unwrap_or(0);
        assert!(
            (1..=10).contains(&replaced),
            "a few bearing lifetimes expected in ~1000 h, got {replaced}"
        );
    }

    #[test]
    fn the_label_walks_through_every_fault_state_in_order() {
        let states = run(5, 60_000, 60.0);
        let mut seen = Vec::new();
        for s in &states {
            if seen.last() != Some(&s.fault_state) {
                seen.push(s.fault_state);
            }
            if s.fault_state == FaultState::Failed {
                assert!(!s.running, "failed bearings stop the spindle");
            }
        }
        let first_cycle: Vec<_> = seen.iter().take(4).copied().collect();
        assert_eq!(
            first_cycle,
            [
                FaultState::Healthy,
                FaultState::Incipient,
                FaultState::Severe,
                FaultState::Failed
            ]
        );
    }

    #[test]
    fn a_degraded_bearing_vibrates_and_runs_hotter_at_the_same_speed() {
        let states = run(9, 60_000, 60.0);
        let mean = |healthy: bool, field: fn(&SpindleState) -> f64| {
            let picked: Vec<f64> = states
                .iter()
                .filter(|s| s.running && s.speed_setpoint_rpm == MAX_SPEED_RPM)
                .filter(|s| s.speed_rpm > MAX_SPEED_RPM - 50.0)
                .filter(|s| {
                    if healthy {
                        s.fault_state == FaultState::Healthy
                    } else {
                        s.fault_state == FaultState::Severe
                    }
                })
                .map(field)
                .collect();
            assert!(!picked.is_empty());
            picked.iter().sum::<f64>() / picked.len() as f64
        };
        assert!(mean(false, |s| s.vibration_mm_s) > 1.5 * mean(true, |s| s.vibration_mm_s));
        assert!(mean(false, |s| s.bearing_temp_c) > mean(true, |s| s.bearing_temp_c) + 3.0);
    }

    #[test]
    fn a_stopped_spindle_reads_zero_speed_load_and_current() {
        let states = run(11, 20_000, 60.0);
        let stopped: Vec<_> = states.iter().filter(|s| !s.running).collect();
        assert!(!stopped.is_empty(), "the job schedule includes pauses");
        for s in stopped {
            assert_eq!(s.speed_rpm, 0.0);
            assert_eq!(s.load_pct, 0.0);
            assert_eq!(s.motor_current_a, 0.0);
        }
    }

    #[test]
    fn readings_are_the_doubles_nearest_to_the_sensor_digits() {
        let decimals = |value: f64| {
            let text = value.to_string();
            text.split_once('.')
                .map_or(0, |(_, fraction)| fraction.len())
        };
        for s in run(13, 5_000, 60.0) {
            assert_eq!(decimals(s.speed_rpm), 0, "{}", s.speed_rpm);
            assert!(decimals(s.load_pct) <= 1, "{}", s.load_pct);
            assert!(decimals(s.motor_current_a) <= 2, "{}", s.motor_current_a);
            assert!(decimals(s.bearing_temp_c) <= 1, "{}", s.bearing_temp_c);
            assert!(decimals(s.vibration_mm_s) <= 3, "{}", s.vibration_mm_s);
        }
    }

    #[test]
    fn overtemp_alarm_follows_the_bearing_temperature_with_hysteresis() {
        let states = run(7, 60_000, 60.0);
        assert!(
            states.iter().any(|s| s.overtemp_alarm),
            "a degraded bearing at full speed overheats"
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
