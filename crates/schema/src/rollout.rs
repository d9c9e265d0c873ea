//! In-region rollout waves (SPEC §4).
//!
//! A version's `Rollout` gives a `Start` time and cumulative waves. Every host has a
//! seed in `0..2048`; wave *i* holds the seeds `[2048·P(i−1)/100, 2048·P(i)/100)`. A host
//! in wave *i* becomes eligible at
//! `Start + After(i) + (seed − first_seed(i)) / seeds_in(i) × (After(i+1) − After(i))`,
//! spreading the wave's hosts evenly over the gap to the next wave. Hosts of the last
//! wave are eligible at its `After`. A seed above the last wave's `Percent` is not in
//! the rollout yet (the plan can be extended later).

use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The number of seeds; a host's seed is in `0..SEED_SPACE`.
pub const SEED_SPACE: u16 = 2048;

/// A host's position in every rollout, in `0..2048`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Seed(u16);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("seed {0} is out of range; a host seed is in 0..2048")]
pub struct BadSeed(pub u64);

impl Seed {
    pub fn new(value: u64) -> Result<Seed, BadSeed> {
        match u16::try_from(value) {
            Ok(v) if v < SEED_SPACE => Ok(Seed(v)),
            _ => Err(BadSeed(value)),
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }

    /// Folds any 16-bit number into the seed space (for hashes and random numbers).
    pub fn wrapping(n: u16) -> Seed {
        Seed(n % SEED_SPACE)
    }
}

impl<'de> Deserialize<'de> for Seed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Seed::new(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A duration written the way people write them: `0s`, `90m`, `4h`, `2days`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Delay(pub Duration);

impl Serialize for Delay {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Delay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Delay)
            .map_err(|e| serde::de::Error::custom(format!("bad duration {s:?}: {e}")))
    }
}

/// One wave: the cumulative share of hosts it reaches, and when it starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    #[serde(rename = "Percent")]
    pub percent: u8,
    #[serde(rename = "After")]
    pub after: Delay,
}

/// A version's rollout in one region. Built only through [`Rollout::new`] or
/// deserialisation, both of which check the waves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rollout {
    #[serde(rename = "Start")]
    start: Timestamp,
    #[serde(rename = "Waves")]
    waves: Vec<Wave>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RolloutError {
    #[error("a rollout needs at least one wave")]
    NoWaves,
    #[error("wave {index}: Percent {percent} is out of range 1..=100")]
    PercentRange { index: usize, percent: u8 },
    #[error(
        "wave {index}: Percent {percent} must be above the previous wave's {previous} (Percent is cumulative)"
    )]
    PercentNotIncreasing {
        index: usize,
        percent: u8,
        previous: u8,
    },
    #[error("wave {index}: After must not be earlier than the previous wave's")]
    AfterDecreasing { index: usize },
    #[error("wave {index}: After is too far in the future")]
    AfterTooLarge { index: usize },
}

impl Rollout {
    pub fn new(start: Timestamp, waves: Vec<Wave>) -> Result<Rollout, RolloutError> {
        if waves.is_empty() {
            return Err(RolloutError::NoWaves);
        }
        let ten_years = Duration::from_secs(10 * 366 * 24 * 3600);
        for (index, w) in waves.iter().enumerate() {
            if !(1..=100).contains(&w.percent) {
                return Err(RolloutError::PercentRange {
                    index,
                    percent: w.percent,
                });
            }
            if w.after.0 > ten_years {
                return Err(RolloutError::AfterTooLarge { index });
            }
            if let Some(prev) = index.checked_sub(1).and_then(|i| waves.get(i)) {
                if w.percent <= prev.percent {
                    return Err(RolloutError::PercentNotIncreasing {
                        index,
                        percent: w.percent,
                        previous: prev.percent,
                    });
                }
                if w.after < prev.after {
                    return Err(RolloutError::AfterDecreasing { index });
                }
            }
        }
        Ok(Rollout { start, waves })
    }

    pub fn start(&self) -> Timestamp {
        self.start
    }

    /// The same waves, starting `by` later (a resumed rollout continues where it stopped).
    pub fn delayed(&self, by: jiff::SignedDuration) -> Rollout {
        Rollout {
            start: self.start.checked_add(by).unwrap_or(self.start),
            waves: self.waves.clone(),
        }
    }

    pub fn waves(&self) -> &[Wave] {
        &self.waves
    }

    /// The seeds `[first, end)` of wave `index`.
    pub fn seed_range(&self, index: usize) -> Option<(u16, u16)> {
        let bound = |percent: u8| (u32::from(SEED_SPACE) * u32::from(percent) / 100) as u16;
        let wave = self.waves.get(index)?;
        let first = match index.checked_sub(1) {
            Some(prev) => bound(self.waves.get(prev)?.percent),
            None => 0,
        };
        Some((first, bound(wave.percent)))
    }

    /// The wave that holds `seed`, if any.
    pub fn wave_of(&self, seed: Seed) -> Option<usize> {
        (0..self.waves.len()).find(|&i| {
            self.seed_range(i)
                .is_some_and(|(first, end)| (first..end).contains(&seed.0))
        })
    }

    /// When the host with `seed` becomes eligible, or `None` when no wave holds it yet (or
    /// when that time is past the last one a timestamp can hold: a `Start` near year 9999).
    pub fn eligible_at(&self, seed: Seed) -> Option<Timestamp> {
        let index = self.wave_of(seed)?;
        let (first, end) = self.seed_range(index)?;
        let wave = self.waves.get(index)?;
        let base = self
            .start
            .checked_add(jiff::SignedDuration::try_from(wave.after.0).ok()?)
            .ok()?;
        let Some(next) = self.waves.get(index + 1) else {
            return Some(base);
        };
        let span_ms = next.after.0.saturating_sub(wave.after.0).as_millis();
        let offset_ms = span_ms * u128::from(seed.0 - first) / u128::from(end - first);
        let offset = jiff::SignedDuration::from_millis(i64::try_from(offset_ms).ok()?);
        base.checked_add(offset).ok()
    }

    /// True when the host with `seed` may take this version at `now`.
    pub fn is_eligible(&self, seed: Seed, now: Timestamp) -> bool {
        self.eligible_at(seed).is_some_and(|at| at <= now)
    }
}

impl<'de> Deserialize<'de> for Rollout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(rename = "Start")]
            start: Timestamp,
            #[serde(rename = "Waves")]
            waves: Vec<Wave>,
        }
        let w = Wire::deserialize(d)?;
        Rollout::new(w.start, w.waves).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn hours(h: u64) -> Delay {
        Delay(Duration::from_secs(h * 3600))
    }

    fn plan() -> Rollout {
        Rollout::new(
            t0(),
            vec![
                Wave {
                    percent: 5,
                    after: hours(0),
                },
                Wave {
                    percent: 25,
                    after: hours(4),
                },
                Wave {
                    percent: 100,
                    after: hours(24),
                },
            ],
        )
        .unwrap()
    }

    fn seed(n: u64) -> Seed {
        Seed::new(n).unwrap()
    }

    #[test]
    fn seed_bounds() {
        assert!(Seed::new(2047).is_ok());
        assert_eq!(Seed::new(2048), Err(BadSeed(2048)));
        assert_eq!(Seed::new(u64::MAX), Err(BadSeed(u64::MAX)));
    }

    /// A `Start` near the end of time made the spread inside a wave overflow the timestamp,
    /// and `resolve` panicked on such a manifest (the `manifest` fuzz target's seed
    /// `fuzz/seeds/manifest/rollout-end-of-time.json`).
    #[test]
    fn start_near_the_end_of_time_is_never_eligible() {
        let start: Timestamp = "9999-12-30T00:00:00Z".parse().unwrap();
        let r = Rollout::new(
            start,
            vec![
                Wave {
                    percent: 99,
                    after: hours(0),
                },
                Wave {
                    percent: 100,
                    after: hours(24 * 3650),
                },
            ],
        )
        .unwrap();
        assert_eq!(r.eligible_at(seed(0)), Some(start));
        assert_eq!(r.eligible_at(seed(2000)), None);
        assert!(!r.is_eligible(seed(2000), Timestamp::MAX));
        assert_eq!(r.eligible_at(seed(2047)), None);
    }

    #[test]
    fn wave_table() {
        let r = plan();
        // wave 0: seeds [0, 102), spread over 0h..4h
        assert_eq!(r.seed_range(0), Some((0, 102)));
        assert_eq!(r.seed_range(1), Some((102, 512)));
        assert_eq!(r.seed_range(2), Some((512, 2048)));
        let table = [
            (0, t0()),
            (
                51,
                t0() + jiff::SignedDuration::from_millis(4 * 3_600_000 * 51 / 102),
            ),
            (
                101,
                t0() + jiff::SignedDuration::from_millis(4 * 3_600_000 * 101 / 102),
            ),
            // wave 1 starts at 4h with its *first* seed, not at an offset from seed 0
            (102, t0() + jiff::SignedDuration::from_hours(4)),
            (
                307,
                t0() + jiff::SignedDuration::from_hours(4)
                    + jiff::SignedDuration::from_millis(20 * 3_600_000 * 205 / 410),
            ),
            // last wave: all at its After
            (512, t0() + jiff::SignedDuration::from_hours(24)),
            (2047, t0() + jiff::SignedDuration::from_hours(24)),
        ];
        for (s, want) in table {
            assert_eq!(r.eligible_at(seed(s)), Some(want), "seed {s}");
        }
        assert!(!r.is_eligible(seed(102), t0() + jiff::SignedDuration::from_hours(3)));
        assert!(r.is_eligible(seed(102), t0() + jiff::SignedDuration::from_hours(4)));
    }

    #[test]
    fn seeds_beyond_the_last_wave_wait() {
        let r = Rollout::new(
            t0(),
            vec![Wave {
                percent: 10,
                after: hours(0),
            }],
        )
        .unwrap();
        assert_eq!(r.eligible_at(seed(204)), None);
        assert!(r.eligible_at(seed(203)).is_some());
        assert!(!r.is_eligible(
            seed(2000),
            t0() + jiff::SignedDuration::from_hours(24 * 365)
        ));
    }

    #[test]
    fn bad_plans() {
        assert_eq!(Rollout::new(t0(), vec![]), Err(RolloutError::NoWaves));
        assert!(matches!(
            Rollout::new(
                t0(),
                vec![Wave {
                    percent: 0,
                    after: hours(0)
                }]
            ),
            Err(RolloutError::PercentRange { .. })
        ));
        assert!(matches!(
            Rollout::new(
                t0(),
                vec![Wave {
                    percent: 101,
                    after: hours(0)
                }]
            ),
            Err(RolloutError::PercentRange { .. })
        ));
        assert!(matches!(
            Rollout::new(
                t0(),
                vec![
                    Wave {
                        percent: 50,
                        after: hours(0)
                    },
                    Wave {
                        percent: 50,
                        after: hours(1)
                    }
                ]
            ),
            Err(RolloutError::PercentNotIncreasing { .. })
        ));
        assert!(matches!(
            Rollout::new(
                t0(),
                vec![
                    Wave {
                        percent: 10,
                        after: hours(5)
                    },
                    Wave {
                        percent: 50,
                        after: hours(1)
                    }
                ]
            ),
            Err(RolloutError::AfterDecreasing { index: 1 })
        ));
        let json = r#"{"Start":"2026-01-01T00:00:00Z","Waves":[{"Percent":50,"After":"1h"},{"Percent":40,"After":"2h"}]}"#;
        assert!(serde_json::from_str::<Rollout>(json).is_err());
        let json = r#"{"Start":"2026-01-01T00:00:00Z","Waves":[{"Percent":50,"After":"soon"}]}"#;
        assert!(serde_json::from_str::<Rollout>(json).is_err());
    }

    #[test]
    fn round_trips_json() {
        let r = plan();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"Start":"2026-01-01T00:00:00Z","Waves":[{"Percent":5,"After":"0s"},{"Percent":25,"After":"4h"},{"Percent":100,"After":"1day"}]}"#
        );
        assert_eq!(serde_json::from_str::<Rollout>(&json).unwrap(), r);
    }

    fn waves_strategy() -> impl Strategy<Value = Vec<Wave>> {
        // 2..=5 waves with increasing percents and non-decreasing delays (minutes).
        (2usize..=5).prop_flat_map(|n| {
            (
                proptest::sample::subsequence((1u8..=99).collect::<Vec<_>>(), n - 1),
                proptest::collection::vec(0u64..10_000, n),
            )
                .prop_map(|(mut percents, mut delays)| {
                    percents.push(100);
                    delays.sort_unstable();
                    percents
                        .into_iter()
                        .zip(delays)
                        .map(|(percent, m)| Wave {
                            percent,
                            after: Delay(Duration::from_secs(m * 60)),
                        })
                        .collect()
                })
        })
    }

    proptest! {
        /// Every seed lands in exactly one wave, and no host is eligible before its wave starts
        /// or after the next one starts.
        #[test]
        fn every_seed_in_one_wave(waves in waves_strategy()) {
            let r = Rollout::new(t0(), waves).unwrap();
            for s in 0..SEED_SPACE {
                let s = seed(u64::from(s));
                let i = r.wave_of(s).unwrap();
                let at = r.eligible_at(s).unwrap();
                let start = t0() + jiff::SignedDuration::try_from(r.waves()[i].after.0).unwrap();
                prop_assert!(at >= start);
                if let Some(next) = r.waves().get(i + 1) {
                    let end = t0() + jiff::SignedDuration::try_from(next.after.0).unwrap();
                    prop_assert!(at <= end);
                }
            }
        }

        /// Within each wave that has a following wave, eligibility times are spread evenly
        /// over the gap: split the gap into k equal slots, and each slot holds the wave's
        /// seed count / k, give or take one. No instant gathers a pile of hosts.
        #[test]
        fn hosts_spread_evenly(waves in waves_strategy(), k in 1u32..=8) {
            let r = Rollout::new(t0(), waves).unwrap();
            for i in 0..r.waves().len() - 1 {
                let (first, end) = r.seed_range(i).unwrap();
                let from = r.waves()[i].after.0.as_millis() as i64;
                let to = r.waves()[i + 1].after.0.as_millis() as i64;
                let span = to - from;
                let count = u32::from(end - first);
                if span < i64::from(count) {
                    continue; // a gap shorter than one millisecond per host cannot spread them
                }
                let mut slots = vec![0u32; k as usize];
                let mut seen_times = std::collections::BTreeMap::<i64, u32>::new();
                for s in first..end {
                    let at = r.eligible_at(seed(u64::from(s))).unwrap().duration_since(t0()).as_millis() as i64 - from;
                    let slot = ((at as i128 * i128::from(k)) / i128::from(span)) as usize;
                    slots[slot.min(k as usize - 1)] += 1;
                    *seen_times.entry(at).or_default() += 1;
                }
                let fair = f64::from(count) / f64::from(k);
                for n in &slots {
                    prop_assert!((f64::from(*n) - fair).abs() <= 1.0 + 1e-9,
                        "wave {i}: slots {slots:?}, fair {fair}");
                }
                // no two hosts of a wave share an instant
                prop_assert!(seen_times.values().all(|&n| n == 1));
            }
        }
    }
}
