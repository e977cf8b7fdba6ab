//! When pollers read their machines: on one time grid for the whole
//! process. Every machine with the same `poll_interval_ms` (or a multiple of
//! it) is due at the same instants, so tokio's timer wakes them all in one
//! pass, their answers arrive close together and the gateway can handle
//! them in bursts (fewer wake-ups downstream, rows sharing model forwards)
//! instead of one by one at scattered times. A SCADA "scan class" does the
//! same.
//!
//! Each machine keeps its own task and link, so a slow or dead machine
//! still never delays another: only their start instants are shared.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// How late a tick may be and still be caught up (tokio's `Interval` uses
/// the same bound). Polls every few milliseconds miss their ticks by a
/// timer granule now and then; catching up keeps them at the asked rate.
pub const CATCH_UP: Duration = Duration::from_millis(5);

/// The origin of the process-wide grid: a clock of period `p` ticks at
/// this instant plus whole multiples of `p`. Fixed on first use. The
/// gateway's OPC UA server puts its subscription ticks on the same grid
/// (a little after the polls), so a value polled is published at the next
/// tick instead of one that chance placed just before it.
pub fn grid_epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The ticks of one poll interval, on the process-wide grid.
#[derive(Debug, Clone)]
pub struct PollClock {
    period: Duration,
    epoch: Instant,
    /// The tick the next poll is for; `None`: poll at once.
    due: Option<Instant>,
    /// Ticks passed over since [`PollClock::take_skipped`] last looked.
    skipped: u64,
}

impl PollClock {
    /// A clock ticking every `period` (which must not be zero: the
    /// machine's configuration refuses a zero interval). Its first tick is
    /// at once.
    pub fn new(period: Duration) -> Self {
        Self {
            period: period.max(Duration::from_millis(1)),
            epoch: grid_epoch(),
            due: None,
            skipped: 0,
        }
    }

    /// The interval between ticks.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Ticks passed over (no poll for them) since the last call: a poll
    /// that took longer than the period, or a wake-up that came that late.
    /// The poll made late for a tick is not counted; those it passed over
    /// are.
    pub fn take_skipped(&mut self) -> u64 {
        std::mem::take(&mut self.skipped)
    }

    /// Waits for the next tick. A tick missed by a little (up to
    /// [`CATCH_UP`]) is polled at once and the clock stays on its grid, as
    /// a tokio `Interval` does; a poll that overran by more is followed by
    /// one at once, and the one after it is on the grid again. So a machine
    /// slower than its interval is polled back to back, never less often.
    pub async fn tick(&mut self) {
        if let Some(due) = self.advance(Instant::now()) {
            tokio::time::sleep_until(due).await;
        }
    }

    /// The tick to wait for at `now` (`None`: at once); the clock moves on
    /// to the one after it. A tick whose wait is dropped is not repeated.
    fn advance(&mut self, now: Instant) -> Option<Instant> {
        match self.due {
            Some(due) if due > now => {
                self.due = Some(due + self.period);
                Some(due)
            }
            Some(due) if now - due <= CATCH_UP => {
                self.due = Some(due + self.period);
                None
            }
            _ => {
                if let Some(due) = self.due {
                    // Ticks from `due` up to now, less the one polled now.
                    let passed = (now - due).as_nanos() / self.period.as_nanos();
                    self.skipped = self
                        .skipped
                        .saturating_add(u64::try_from(passed).unwrap_or(u64::MAX));
                }
                self.due = Some(self.next_after(now));
                None
            }
        }
    }

    /// Makes the next tick come at once (after a backoff, say).
    pub fn reset_immediately(&mut self) {
        self.due = None;
    }

    /// The first tick strictly after `now`.
    pub fn next_after(&self, now: Instant) -> Instant {
        let period = self.period.as_nanos();
        // The epoch is later than `now` only under a paused test clock that
        // another runtime of the same process advanced first.
        match now.checked_duration_since(self.epoch) {
            Some(since) => {
                let ticks = since.as_nanos() / period + 1;
                self.epoch + nanos(ticks * period)
            }
            None => {
                let before = self.epoch.duration_since(now).as_nanos();
                // Ticks at epoch - k·period; the smallest k whose tick is after now.
                let k = (before - 1) / period;
                self.epoch - nanos(k * period)
            }
        }
    }
}

/// A duration of `n` nanoseconds (saturating: a grid that far out is never
/// reached).
fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_of_one_interval_tick_at_the_same_instants() {
        let a = PollClock::new(Duration::from_millis(100));
        let b = PollClock::new(Duration::from_millis(100));
        let now = Instant::now();
        assert_eq!(a.next_after(now), b.next_after(now));
        // A machine polled every second is due at one of the 100 ms ticks.
        let slow = PollClock::new(Duration::from_secs(1));
        let tick = slow.next_after(now);
        assert_eq!(a.next_after(tick - Duration::from_nanos(1)), tick);
    }

    #[test]
    fn the_next_tick_is_after_now_and_within_one_interval() {
        let clock = PollClock::new(Duration::from_millis(100));
        let now = Instant::now() + Duration::from_millis(1234);
        let next = clock.next_after(now);
        assert!(next > now && next <= now + Duration::from_millis(100));
        // Exactly on a tick: the next one, not the same.
        assert_eq!(clock.next_after(next), next + Duration::from_millis(100));
        let late = next + Duration::from_millis(350);
        assert_eq!(clock.next_after(late), next + Duration::from_millis(400));
    }

    #[test]
    fn a_poll_that_overran_is_followed_by_one_at_once_then_the_grid() {
        let period = Duration::from_millis(100);
        let mut clock = PollClock::new(period);
        let start = Instant::now();
        // The first tick: at once.
        assert_eq!(clock.advance(start), None);
        // The next: on the grid, within one interval.
        let on_grid = clock.advance(start).unwrap();
        assert!(on_grid > start && on_grid <= start + period);
        assert_eq!(clock.next_after(on_grid - Duration::from_nanos(1)), on_grid);
        // A tick missed by a timer granule: at once, and the grid goes on.
        let granule = on_grid + period + Duration::from_millis(1);
        assert_eq!(clock.advance(granule), None);
        assert_eq!(clock.advance(granule), Some(on_grid + period * 2));
        let on_grid = on_grid + period;
        // A poll from that tick that takes 2.5 intervals: the next one at
        // once, and the one after it on the grid again.
        let late = on_grid + period * 5 / 2;
        assert_eq!(clock.advance(late), None);
        assert_eq!(clock.advance(late), Some(on_grid + period * 3));
        // A reset (after a backoff) ticks at once.
        clock.reset_immediately();
        assert_eq!(clock.advance(late), None);
        // Late polls, none passed over.
        assert_eq!(clock.take_skipped(), 0);
    }

    #[test]
    fn ticks_passed_over_are_counted_once() {
        let period = Duration::from_millis(100);
        let mut clock = PollClock::new(period);
        let start = Instant::now();
        assert_eq!(clock.advance(start), None);
        let tick = clock.advance(start).unwrap();
        // The poll of `tick` takes 3.2 periods: the ticks at +1 and +2
        // periods get no poll, the one at +3 is polled late, at once.
        let now = tick + period * 16 / 5;
        assert_eq!(clock.advance(now), None);
        assert_eq!(clock.take_skipped(), 2);
        assert_eq!(clock.take_skipped(), 0);
        assert_eq!(clock.advance(now), Some(tick + period * 4));
        // After a reset (a backoff) nothing was due: nothing skipped.
        clock.reset_immediately();
        assert_eq!(clock.advance(now + period * 10), None);
        assert_eq!(clock.take_skipped(), 0);
    }

    #[test]
    fn instants_before_the_epoch_land_on_the_same_grid() {
        // Only reachable as a test whose paused clock lags another's.
        let epoch = Instant::now() + Duration::from_secs(1);
        let clock = PollClock {
            period: Duration::from_millis(100),
            epoch,
            due: None,
            skipped: 0,
        };
        let early = epoch - Duration::from_millis(250);
        assert_eq!(clock.next_after(early), epoch - Duration::from_millis(200));
        let on_tick = epoch - Duration::from_millis(100);
        assert_eq!(clock.next_after(on_tick), epoch);
    }
}
