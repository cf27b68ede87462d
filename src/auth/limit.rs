//! Rate limits: a token bucket per key (or per client address for requests without a valid key)
//! and per class of request, with governor's GCRA buckets.
//!
//! Searches, reads and writes have separate buckets, so a bulk upload does not starve a shop's
//! searches. Limits come from the key's own overrides, else its kind's defaults
//! ([`RateLimits`]). Buckets live in this process only: with N replicas a key gets up to N times
//! its limit. This module must never block: a refused request is told when to come back
//! (`Retry-After`), never queued.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use serde::{Deserialize, Serialize};
use snapshop_store::KeyKind;

use super::Principal;

/// Idle buckets are forgotten after this long (a full bucket is the same as a new one).
const IDLE: Duration = Duration::from_secs(600);
/// Buckets are pruned at most this often.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// One token bucket: `per_second` tokens refill, up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub per_second: f64,
    pub burst: u32,
}

impl Bucket {
    pub const fn new(per_second: f64, burst: u32) -> Self {
        Self { per_second, burst }
    }

    /// Whether governor can represent it: a positive finite rate and a positive burst.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.per_second.is_finite() && self.per_second > 0.0 && self.per_second <= 1e6) {
            return Err("per_second must be in (0, 1000000]".into());
        }
        if self.burst == 0 {
            return Err("burst must be at least 1".into());
        }
        Ok(())
    }

    fn quota(&self) -> Quota {
        let period = Duration::from_secs_f64(1.0 / self.per_second).max(Duration::from_nanos(1));
        Quota::with_period(period)
            .expect("a positive period; validated")
            .allow_burst(NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN))
    }
}

/// What a request costs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Search,
    Read,
    Write,
}

impl Class {
    pub const fn as_str(self) -> &'static str {
        match self {
            Class::Search => "search",
            Class::Read => "read",
            Class::Write => "write",
        }
    }
}

/// Buckets for one kind of key, by class. A per-key override (the key's `rate_limits`) has the
/// same shape, with every field optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindLimits {
    pub search: Bucket,
    pub read: Bucket,
    pub write: Bucket,
}

impl KindLimits {
    fn get(&self, class: Class) -> Bucket {
        match class {
            Class::Search => self.search,
            Class::Read => self.read,
            Class::Write => self.write,
        }
    }
}

/// A key's own limits; unset classes use its kind's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<Bucket>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<Bucket>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write: Option<Bucket>,
}

impl KeyLimits {
    pub fn validate(&self) -> Result<(), String> {
        for (name, b) in [
            ("search", self.search),
            ("read", self.read),
            ("write", self.write),
        ] {
            if let Some(b) = b {
                b.validate()
                    .map_err(|e| format!("rate_limits.{name}: {e}"))?;
            }
        }
        Ok(())
    }

    fn get(&self, class: Class) -> Option<Bucket> {
        match class {
            Class::Search => self.search,
            Class::Read => self.read,
            Class::Write => self.write,
        }
    }
}

/// `[rate_limits]`: the default buckets of each key kind, and of requests without a valid key
/// (one bucket per client address, every class together).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// Off: no request is ever refused for its rate.
    pub enabled: bool,
    pub anonymous: Bucket,
    pub admin: KindLimits,
    pub merchant: KindLimits,
    pub search: KindLimits,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            enabled: true,
            anonymous: Bucket::new(5.0, 20),
            admin: KindLimits {
                search: Bucket::new(100.0, 200),
                read: Bucket::new(200.0, 400),
                write: Bucket::new(100.0, 200),
            },
            merchant: KindLimits {
                search: Bucket::new(50.0, 100),
                read: Bucket::new(100.0, 200),
                write: Bucket::new(50.0, 100),
            },
            search: KindLimits {
                search: Bucket::new(100.0, 200),
                read: Bucket::new(20.0, 40),
                write: Bucket::new(5.0, 10),
            },
        }
    }
}

impl RateLimits {
    pub fn validate(&self) -> Result<(), String> {
        self.anonymous
            .validate()
            .map_err(|e| format!("rate_limits.anonymous: {e}"))?;
        for (kind, l) in [
            ("admin", &self.admin),
            ("merchant", &self.merchant),
            ("search", &self.search),
        ] {
            for class in [Class::Search, Class::Read, Class::Write] {
                l.get(class)
                    .validate()
                    .map_err(|e| format!("rate_limits.{kind}.{}: {e}", class.as_str()))?;
            }
        }
        Ok(())
    }

    fn of_kind(&self, kind: KeyKind) -> &KindLimits {
        match kind {
            KeyKind::Admin => &self.admin,
            KeyKind::Merchant => &self.merchant,
            KeyKind::Search => &self.search,
        }
    }
}

/// Whose bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Owner {
    Key(i64),
    Address(IpAddr),
}

struct Entry {
    bucket: Bucket,
    limiter: DefaultDirectRateLimiter,
    seen: Instant,
}

/// The buckets of this process.
pub struct RateLimiter {
    config: RateLimits,
    clock: DefaultClock,
    buckets: Mutex<Buckets>,
}

struct Buckets {
    map: HashMap<(Owner, Option<Class>), Entry>,
    pruned: Instant,
}

impl RateLimiter {
    pub fn new(config: RateLimits) -> Self {
        Self {
            config,
            clock: DefaultClock::default(),
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                pruned: Instant::now(),
            }),
        }
    }

    /// Takes one token for a keyed request (`principal` is `None` for a request without a valid
    /// key, charged to `address`). `Err(wait)`: refused, retry after `wait`.
    pub fn check(
        &self,
        principal: Option<&Principal>,
        address: IpAddr,
        class: Class,
    ) -> Result<(), Duration> {
        if !self.config.enabled {
            return Ok(());
        }
        let (owner, class_key, bucket) = match principal.and_then(|p| p.key().map(|k| (p, k))) {
            Some((p, key)) => {
                let own = key
                    .rate_limits
                    .as_ref()
                    .and_then(|v| KeyLimits::deserialize(v).ok())
                    .and_then(|l| l.get(class));
                let bucket = own.unwrap_or_else(|| self.config.of_kind(p.kind()).get(class));
                (Owner::Key(key.id), Some(class), bucket)
            }
            // Development mode: the admin limits, per address.
            None if principal.is_some() => (
                Owner::Address(address),
                Some(class),
                self.config.admin.get(class),
            ),
            None => (Owner::Address(address), None, self.config.anonymous),
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(buckets.pruned) >= PRUNE_EVERY {
            buckets.map.retain(|_, e| now.duration_since(e.seen) < IDLE);
            buckets.pruned = now;
        }
        let entry = buckets
            .map
            .entry((owner, class_key))
            .or_insert_with(|| Entry {
                bucket,
                limiter: DefaultDirectRateLimiter::direct(bucket.quota()),
                seen: now,
            });
        if entry.bucket != bucket {
            // The key's limits changed: start it on a fresh bucket.
            entry.bucket = bucket;
            entry.limiter = DefaultDirectRateLimiter::direct(bucket.quota());
        }
        entry.seen = now;
        entry
            .limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use snapshop_store::KeyRecord;

    use super::*;

    fn key(id: i64, kind: KeyKind, limits: Option<serde_json::Value>) -> Principal {
        Principal::Key(Arc::new(KeyRecord {
            id,
            kind,
            hash: String::new(),
            prefix: String::new(),
            label: String::new(),
            merchant: None,
            merchants: None,
            origins: vec![],
            rate_limits: limits,
            created_at: 0,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        }))
    }

    fn slow() -> RateLimits {
        let b = Bucket::new(0.001, 2);
        let kind = KindLimits {
            search: b,
            read: b,
            write: b,
        };
        RateLimits {
            enabled: true,
            anonymous: Bucket::new(0.001, 1),
            admin: kind.clone(),
            merchant: kind.clone(),
            search: kind,
        }
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn a_bucket_refuses_past_its_burst_and_says_how_long_to_wait() {
        let limiter = RateLimiter::new(slow());
        let k = key(1, KeyKind::Merchant, None);
        assert!(limiter.check(Some(&k), IP, Class::Write).is_ok());
        assert!(limiter.check(Some(&k), IP, Class::Write).is_ok());
        let wait = limiter.check(Some(&k), IP, Class::Write).unwrap_err();
        assert!(wait > Duration::from_secs(100), "{wait:?}");
        // Other classes and other keys have their own buckets.
        assert!(limiter.check(Some(&k), IP, Class::Search).is_ok());
        assert!(limiter
            .check(Some(&key(2, KeyKind::Merchant, None)), IP, Class::Write)
            .is_ok());
        // Requests without a key share one bucket per address.
        assert!(limiter.check(None, IP, Class::Read).is_ok());
        assert!(limiter.check(None, IP, Class::Write).is_err());
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(limiter.check(None, other, Class::Write).is_ok());
    }

    #[test]
    fn a_key_override_wins_and_off_means_off() {
        let limiter = RateLimiter::new(slow());
        let roomy = key(
            3,
            KeyKind::Search,
            Some(serde_json::json!({"search": {"per_second": 1000.0, "burst": 50}})),
        );
        for _ in 0..50 {
            assert!(limiter.check(Some(&roomy), IP, Class::Search).is_ok());
        }
        assert!(limiter.check(Some(&roomy), IP, Class::Read).is_ok());
        let off = RateLimiter::new(RateLimits {
            enabled: false,
            ..slow()
        });
        for _ in 0..10 {
            assert!(off.check(None, IP, Class::Write).is_ok());
        }
    }

    #[test]
    fn limits_are_validated() {
        assert!(RateLimits::default().validate().is_ok());
        assert!(Bucket::new(0.0, 1).validate().is_err());
        assert!(Bucket::new(f64::NAN, 1).validate().is_err());
        assert!(Bucket::new(1.0, 0).validate().is_err());
        let bad = KeyLimits {
            write: Some(Bucket::new(-1.0, 3)),
            ..KeyLimits::default()
        };
        assert!(bad.validate().unwrap_err().contains("rate_limits.write"));
    }
}
