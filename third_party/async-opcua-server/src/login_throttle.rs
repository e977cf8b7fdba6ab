//! IronBridge patch: failed logins throttled per client address.
//!
//! After `free_failures` failed ActivateSession calls from one IP address,
//! that address is refused (without checking its credentials) for a lockout
//! that doubles with each further failure, from `lockout` up to
//! `max_lockout`. A success clears the address. Only the failing address is
//! locked, so the throttle cannot be used to lock out another client; the
//! table is bounded (`max_addresses`, the least recently seen address goes
//! first), so many addresses cannot grow it without end.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How failed logins are throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginThrottleConfig {
    /// Failures from one address before it is locked out (0: throttling off).
    pub free_failures: u32,
    /// The first lockout; each further failure doubles it.
    pub lockout: Duration,
    /// The longest lockout.
    pub max_lockout: Duration,
    /// Addresses tracked at most.
    pub max_addresses: usize,
}

impl Default for LoginThrottleConfig {
    fn default() -> Self {
        Self {
            free_failures: 5,
            lockout: Duration::from_secs(1),
            max_lockout: Duration::from_secs(60),
            max_addresses: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    locked_until: Option<Instant>,
    last_seen: Instant,
}

/// The per-address failure table.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    config: LoginThrottleConfig,
    table: Mutex<HashMap<IpAddr, Failures>>,
}

impl LoginThrottle {
    /// A throttle with `config`.
    pub fn new(config: LoginThrottleConfig) -> Self {
        Self {
            config,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(remaining)` while `ip` is locked out.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        match table.get(&ip).and_then(|f| f.locked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Books a failed login from `ip`; returns the lockout it now has.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.config.free_failures == 0 {
            return None;
        }
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !table.contains_key(&ip) && table.len() >= self.config.max_addresses.max(1) {
            let oldest = table
                .iter()
                .min_by_key(|(_, f)| f.last_seen)
                .map(|(ip, _)| *ip);
            if let Some(oldest) = oldest {
                table.remove(&oldest);
            }
        }
        let entry = table.entry(ip).or_insert(Failures {
            count: 0,
            locked_until: None,
            last_seen: now,
        });
        // A long quiet spell forgives the past.
        if now.duration_since(entry.last_seen) > self.config.max_lockout * 2 {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last_seen = now;
        if entry.count < self.config.free_failures {
            return None;
        }
        let doublings = (entry.count - self.config.free_failures).min(16);
        let lockout = self
            .config
            .lockout
            .saturating_mul(1 << doublings)
            .min(self.config.max_lockout);
        entry.locked_until = Some(now + lockout);
        Some(lockout)
    }

    /// A successful login from `ip` clears it.
    pub fn succeeded(&self, ip: IpAddr) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_locked_after_its_free_failures_and_others_are_not() {
        let throttle = LoginThrottle::new(LoginThrottleConfig::default());
        let attacker: IpAddr = "10.0.0.66".parse().unwrap();
        let operator: IpAddr = "10.0.0.7".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..4 {
            assert_eq!(throttle.failed(attacker, t0), None);
            assert!(throttle.check(attacker, t0).is_ok());
        }
        assert_eq!(throttle.failed(attacker, t0), Some(Duration::from_secs(1)));
        assert!(throttle.check(attacker, t0).is_err());
        assert!(throttle.check(operator, t0).is_ok());
        // Doubling up to the cap.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(throttle.failed(attacker, later), Some(Duration::from_secs(2)));
        for _ in 0..10 {
            throttle.failed(attacker, later);
        }
        assert_eq!(throttle.check(attacker, later), Err(Duration::from_secs(60)));
        // Over once the lockout has passed; a success clears the count.
        assert!(throttle.check(attacker, later + Duration::from_secs(61)).is_ok());
        throttle.succeeded(attacker);
        assert_eq!(throttle.failed(attacker, later), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let throttle = LoginThrottle::new(LoginThrottleConfig {
            max_addresses: 3,
            ..LoginThrottleConfig::default()
        });
        let t0 = Instant::now();
        for i in 0..100u8 {
            throttle.failed(IpAddr::from([10, 0, 0, i]), t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(throttle.table.lock().unwrap().len(), 3);
    }
}
