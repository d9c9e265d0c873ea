//! The rollout plan, `ci/rollout.toml` (SPEC §8): waves of regions with bake times, the
//! in-region waves each region's manifest gets, and the guards that decide whether a
//! wave may go out. The guards are pure functions over what the buckets say (no clock or
//! network inside), so `publish --wave N` and `rollout advance` apply exactly the same
//! ones.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize};

use molt_schema::region::{Region, Template};
use molt_schema::rollout::{Delay, Rollout, RolloutError, Wave};

/// The plan file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The bucket of each region, e.g. `acme-molt-{region}`. Required: a default bucket
    /// name is a name anyone could register.
    #[serde(deserialize_with = "template")]
    pub bucket: Template,
    /// A key prefix inside each bucket (default: the bucket's root).
    #[serde(default)]
    pub prefix: String,
    /// An S3-compatible endpoint (path-style); AWS S3 when absent.
    pub endpoint_url: Option<String>,
    /// Where hosts report update results (`report` in the hosts' config).
    pub reports: Option<String>,
    /// The largest share of failed updates in the previous waves' reports that still lets
    /// the next wave go (default 0.05).
    #[serde(default = "default_threshold")]
    pub failure_threshold: f64,
    /// How many hosts of the previous waves must have reported before the next wave may go
    /// (default 10; 0 lets a wave go on its bake time alone). Fewer refuse the wave, unless
    /// forced (`--allow-few-reports`).
    #[serde(default = "default_min_reports")]
    pub min_reports: u32,
    /// Regions published at once (default 4).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(rename = "wave")]
    pub waves: Vec<RegionWave>,
}

/// One wave of regions.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionWave {
    pub name: Option<String>,
    pub regions: Vec<Region>,
    /// How long this wave bakes before the next may start.
    #[serde(deserialize_with = "duration")]
    pub bake: Duration,
    /// The in-region waves each of its regions' manifests gets: cumulative percent of
    /// hosts and when after publishing (`[{ percent = 10, after = "0s" }, …]`). Absent:
    /// every host at once.
    #[serde(default)]
    pub rollout: Vec<InRegionWave>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InRegionWave {
    pub percent: u8,
    #[serde(deserialize_with = "duration")]
    pub after: Duration,
}

fn default_threshold() -> f64 {
    0.05
}

fn default_min_reports() -> u32 {
    10
}

fn default_concurrency() -> usize {
    4
}

fn template<'de, D: Deserializer<'de>>(d: D) -> Result<Template, D::Error> {
    let s = String::deserialize(d)?;
    Template::parse(&s).map_err(serde::de::Error::custom)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!("bad duration {s:?} ({e}); write e.g. \"24h\""))
    })
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read the rollout plan {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid rollout plan {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Plan {
    pub fn parse(text: &str, path: &Path) -> Result<Plan, PlanError> {
        let invalid = |message: String| PlanError::Invalid {
            path: path.to_owned(),
            message,
        };
        let plan: Plan =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_owned()))?;
        if plan.waves.is_empty() {
            return Err(invalid("it has no [[wave]]".into()));
        }
        let mut seen = BTreeSet::new();
        for (i, w) in plan.waves.iter().enumerate() {
            if w.regions.is_empty() {
                return Err(invalid(format!("wave {} lists no regions", i + 1)));
            }
            for r in &w.regions {
                if !seen.insert(r.clone()) {
                    return Err(invalid(format!("region {r} is in more than one wave")));
                }
            }
            if !w.rollout.is_empty() {
                w.in_region(Timestamp::UNIX_EPOCH)
                    .map_err(|e| invalid(format!("wave {}: rollout: {e}", i + 1)))?;
            }
        }
        if !(0.0..=1.0).contains(&plan.failure_threshold) {
            return Err(invalid(format!(
                "failure_threshold {} is not between 0 and 1",
                plan.failure_threshold
            )));
        }
        if plan.concurrency == 0 {
            return Err(invalid("concurrency must be at least 1".into()));
        }
        Ok(plan)
    }

    pub fn load(path: &Path) -> Result<Plan, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
            path: path.to_owned(),
            source,
        })?;
        Plan::parse(&text, path)
    }

    /// The wave (0-based) a region belongs to.
    pub fn wave_of(&self, region: &Region) -> Option<usize> {
        self.waves.iter().position(|w| w.regions.contains(region))
    }

    /// Every region of the plan, wave by wave.
    pub fn regions(&self) -> Vec<Region> {
        self.waves.iter().flat_map(|w| w.regions.clone()).collect()
    }
}

impl RegionWave {
    /// The in-region rollout for a release published at `start`, if the wave has one.
    pub fn in_region(&self, start: Timestamp) -> Result<Option<Rollout>, RolloutError> {
        if self.rollout.is_empty() {
            return Ok(None);
        }
        let waves = self
            .rollout
            .iter()
            .map(|w| Wave {
                percent: w.percent,
                after: Delay(w.after),
            })
            .collect();
        Rollout::new(start, waves).map(Some)
    }

    pub fn label(&self, index: usize) -> String {
        match &self.name {
            Some(n) => format!("wave {} ({n})", index + 1),
            None => format!("wave {}", index + 1),
        }
    }
}

/// What one region's bucket says about one version.
#[derive(Clone, Debug, Serialize)]
pub struct RegionFacts {
    pub region: Region,
    /// When the version was published there; `None` when it is not.
    pub published: Option<Timestamp>,
    /// Its status there (Active, Deprecated, …).
    pub status: Option<String>,
    pub halted: Option<String>,
    /// `Err` with the reason when the region does not verify.
    pub verified: Result<(), String>,
}

/// Hosts' reports for one version in the previous waves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReportCounts {
    pub total: u32,
    pub failed: u32,
}

/// Why a wave may not go out.
#[derive(Clone, Debug, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "guard", rename_all = "snake_case")]
pub enum Refused {
    #[error("{region} (wave {wave}) does not have {version} yet")]
    NotPublished {
        region: Region,
        wave: usize,
        version: String,
    },
    #[error("{region} (wave {wave}) bakes until {until}")]
    Baking {
        region: Region,
        wave: usize,
        until: Timestamp,
    },
    #[error("the rollout is halted in {region}: {reason}")]
    Halted { region: Region, reason: String },
    #[error("{region} (wave {wave}) does not verify: {error}")]
    Unverified {
        region: Region,
        wave: usize,
        error: String,
    },
    #[error(
        "{failed} of {total} hosts' updates failed in the earlier waves ({rate:.1}%), over the plan's threshold of {threshold:.1}%"
    )]
    FailureRate {
        failed: u32,
        total: u32,
        rate: f64,
        threshold: f64,
    },
    #[error("only {total} hosts reported from the earlier waves; the plan wants {min} first")]
    TooFewReports { total: u32, min: u32 },
    #[error(
        "the plan has no `reports` sink, so no host's result counts; it wants {min} hosts' reports before a wave goes"
    )]
    NoReportSink { min: u32 },
    #[error("there is no wave {wave}; the plan has {waves}")]
    NoSuchWave { wave: usize, waves: usize },
}

/// The guards of SPEC §8 for sending `wave` (1-based) out: every earlier wave's regions
/// have the version, have baked, verify, and are not halted; nothing is halted anywhere;
/// and the failure rate in the earlier waves' reports is within the threshold. All
/// refusals are returned, not just the first.
pub fn check_wave(
    plan: &Plan,
    wave: usize,
    version: &str,
    facts: &[RegionFacts],
    reports: ReportCounts,
    now: Timestamp,
    allow_few_reports: bool,
) -> Vec<Refused> {
    let mut out = Vec::new();
    if wave == 0 || wave > plan.waves.len() {
        out.push(Refused::NoSuchWave {
            wave,
            waves: plan.waves.len(),
        });
        return out;
    }
    for f in facts {
        if let Some(reason) = &f.halted {
            out.push(Refused::Halted {
                region: f.region.clone(),
                reason: reason.clone(),
            });
        }
    }
    for (i, w) in plan.waves.iter().enumerate().take(wave - 1) {
        for region in &w.regions {
            let fact = facts.iter().find(|f| &f.region == region);
            match fact.and_then(|f| f.published) {
                None => out.push(Refused::NotPublished {
                    region: region.clone(),
                    wave: i + 1,
                    version: version.to_owned(),
                }),
                Some(at) => {
                    let until = jiff::SignedDuration::try_from(w.bake)
                        .ok()
                        .and_then(|d| at.checked_add(d).ok())
                        .unwrap_or(Timestamp::MAX);
                    if now < until {
                        out.push(Refused::Baking {
                            region: region.clone(),
                            wave: i + 1,
                            until,
                        });
                    }
                }
            }
            if let Some(Err(error)) = fact.map(|f| &f.verified) {
                out.push(Refused::Unverified {
                    region: region.clone(),
                    wave: i + 1,
                    error: error.clone(),
                });
            }
        }
    }
    if wave > 1 {
        let few = reports.total < plan.min_reports;
        if few && !allow_few_reports {
            out.push(if plan.reports.is_none() {
                Refused::NoReportSink {
                    min: plan.min_reports,
                }
            } else {
                Refused::TooFewReports {
                    total: reports.total,
                    min: plan.min_reports,
                }
            });
        }
        if reports.total > 0 {
            let rate = f64::from(reports.failed) / f64::from(reports.total);
            if rate > plan.failure_threshold {
                out.push(Refused::FailureRate {
                    failed: reports.failed,
                    total: reports.total,
                    rate: rate * 100.0,
                    threshold: plan.failure_threshold * 100.0,
                });
            }
        }
    }
    out
}

/// The wave `rollout advance` would send next: the first whose regions do not all have
/// the version (1-based), or `None` when every wave has it.
pub fn next_wave(plan: &Plan, facts: &[RegionFacts]) -> Option<usize> {
    plan.waves
        .iter()
        .position(|w| {
            w.regions.iter().any(|r| {
                facts
                    .iter()
                    .find(|f| &f.region == r)
                    .is_none_or(|f| f.published.is_none())
            })
        })
        .map(|i| i + 1)
}

/// When the wave after `wave` (1-based) may go: the latest publish time in `wave` plus
/// its bake, if every region of it has the version.
pub fn next_allowed(plan: &Plan, wave: usize, facts: &[RegionFacts]) -> Option<Timestamp> {
    let w = plan.waves.get(wave.checked_sub(1)?)?;
    let mut latest: Option<Timestamp> = None;
    for r in &w.regions {
        let at = facts.iter().find(|f| &f.region == r)?.published?;
        latest = Some(latest.map_or(at, |l: Timestamp| l.max(at)));
    }
    let bake = jiff::SignedDuration::try_from(w.bake).ok()?;
    latest?.checked_add(bake).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = r#"
bucket = "acme-molt-{region}"
failure_threshold = 0.1
min_reports = 2

[[wave]]
name = "canary"
regions = ["us-east-1"]
bake = "24h"
rollout = [{ percent = 10, after = "0s" }, { percent = 100, after = "6h" }]

[[wave]]
regions = ["us-west-2", "eu-west-1"]
bake = "48h"

[[wave]]
regions = ["ap-southeast-2"]
bake = "0s"
"#;

    fn plan() -> Plan {
        Plan::parse(PLAN, Path::new("rollout.toml")).unwrap()
    }

    fn r(s: &str) -> Region {
        s.parse().unwrap()
    }

    fn t(h: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap() + jiff::SignedDuration::from_hours(h)
    }

    fn fact(region: &str, published_h: Option<i64>) -> RegionFacts {
        RegionFacts {
            region: r(region),
            published: published_h.map(t),
            status: Some("Active".into()),
            halted: None,
            verified: Ok(()),
        }
    }

    #[test]
    fn parses_and_validates() {
        let p = plan();
        assert_eq!(p.waves.len(), 3);
        assert_eq!(p.wave_of(&r("eu-west-1")), Some(1));
        assert!(p.waves[0].in_region(t(0)).unwrap().is_some());
        assert!(p.waves[1].in_region(t(0)).unwrap().is_none());
        for (bad, want) in [
            (
                PLAN.replace("bucket = \"acme-molt-{region}\"\n", ""),
                "bucket",
            ),
            (
                PLAN.replace("\"ap-southeast-2\"", "\"us-east-1\""),
                "more than one wave",
            ),
            (
                PLAN.replace("bake = \"0s\"", "bake = \"soon\""),
                "bad duration",
            ),
            (PLAN.replace("percent = 100", "percent = 5"), "rollout"),
            (PLAN.replace("min_reports", "min_report"), "min_report"),
            (PLAN.replace("0.1", "1.5"), "failure_threshold"),
        ] {
            let err = Plan::parse(&bad, Path::new("rollout.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn wave_one_always_goes_and_wave_two_waits_for_the_bake() {
        let p = plan();
        let none = ReportCounts::default();
        assert!(check_wave(&p, 1, "2.0.0", &[], none, t(0), false).is_empty());
        let facts = [fact("us-east-1", Some(0))];
        let enough = ReportCounts {
            total: 10,
            failed: 0,
        };
        let refused = check_wave(&p, 2, "2.0.0", &facts, enough, t(23), false);
        assert!(
            matches!(refused.as_slice(), [Refused::Baking { until, .. }] if *until == t(24)),
            "{refused:?}"
        );
        assert!(check_wave(&p, 2, "2.0.0", &facts, enough, t(24), false).is_empty());
        // wave 3 needs wave 2's regions too
        let refused = check_wave(&p, 3, "2.0.0", &facts, enough, t(100), false);
        assert_eq!(
            refused
                .iter()
                .filter(|r| matches!(r, Refused::NotPublished { .. }))
                .count(),
            2
        );
        assert_eq!(next_wave(&p, &facts), Some(2));
        assert_eq!(next_allowed(&p, 1, &facts), Some(t(24)));
    }

    #[test]
    fn halts_unverified_regions_and_failures_refuse() {
        let p = plan();
        let mut halted = fact("us-east-1", Some(0));
        halted.halted = Some("errors".into());
        let ok = ReportCounts {
            total: 10,
            failed: 1,
        };
        let refused = check_wave(&p, 2, "2.0.0", &[halted], ok, t(48), false);
        assert!(
            matches!(refused.as_slice(), [Refused::Halted { .. }]),
            "{refused:?}"
        );

        let mut broken = fact("us-east-1", Some(0));
        broken.verified = Err("timestamp expired".into());
        let refused = check_wave(&p, 2, "2.0.0", &[broken], ok, t(48), false);
        assert!(
            matches!(refused.as_slice(), [Refused::Unverified { .. }]),
            "{refused:?}"
        );

        let facts = [fact("us-east-1", Some(0))];
        let bad = ReportCounts {
            total: 10,
            failed: 2,
        };
        let refused = check_wave(&p, 2, "2.0.0", &facts, bad, t(48), false);
        assert!(
            matches!(refused.as_slice(), [Refused::FailureRate { .. }]),
            "{refused:?}"
        );
        assert!(refused[0].to_string().contains("2 of 10"), "{}", refused[0]);
        let few = ReportCounts {
            total: 1,
            failed: 0,
        };
        // This plan has no reports sink: no evidence can ever come, and it says so.
        let refused = check_wave(&p, 2, "2.0.0", &facts, few, t(48), false);
        assert!(
            matches!(refused.as_slice(), [Refused::NoReportSink { min: 2 }]),
            "{refused:?}"
        );
        let mut sink = p.clone();
        sink.reports = Some("s3://acme-molt-reports/molt/".into());
        let refused = check_wave(&sink, 2, "2.0.0", &facts, few, t(48), false);
        assert!(
            matches!(
                refused.as_slice(),
                [Refused::TooFewReports { total: 1, min: 2 }]
            ),
            "{refused:?}"
        );
        // Forced: too few reports let it go, but the ones there still count.
        assert!(check_wave(&sink, 2, "2.0.0", &facts, few, t(48), true).is_empty());
        let one_bad = ReportCounts {
            total: 1,
            failed: 1,
        };
        let refused = check_wave(&sink, 2, "2.0.0", &facts, one_bad, t(48), true);
        assert!(
            matches!(refused.as_slice(), [Refused::FailureRate { .. }]),
            "{refused:?}"
        );
        // With nothing said, a wave needs 10 hosts' reports.
        let default = Plan::parse(
            &PLAN.replace("min_reports = 2\n", ""),
            Path::new("rollout.toml"),
        )
        .unwrap();
        assert_eq!(default.min_reports, 10);
        assert!(matches!(
            check_wave(&p, 4, "2.0.0", &facts, ok, t(48), false).as_slice(),
            [Refused::NoSuchWave { .. }]
        ));
    }
}
