//! Which version a host should move to, and every rule that can refuse (SPEC §4, §6).
//!
//! [`resolve`] is a pure function of the manifest, the host's state and the request,
//! with the clock and the host seed passed in, so every rule has a table test.
//!
//! The rules, in the order they are applied:
//!
//! | situation | outcome | exit |
//! |---|---|---|
//! | package missing from the manifest | refuse [`Refusal::PackageMissing`] | 3 |
//! | explicit target equal to current, no `--force` | skip, up to date | 0 |
//! | explicit target not in the manifest | refuse [`Refusal::NotInManifest`] | 3 |
//! | target has no file for this platform | refuse [`Refusal::UnsupportedPlatform`] | 3 |
//! | explicit target Inactive / Deprecated / unknown status | refuse | 3 |
//! | target above `MaxVersion` | refuse [`Refusal::AboveMaxVersion`] | 3 |
//! | target older than current, no `--allow-downgrade`, current not recalled | refuse [`Refusal::Downgrade`] | 3 |
//! | explicit target quarantined on this host, no `--force` | refuse [`Refusal::Quarantined`] | 3 |
//! | `latest`/`stable`: not yet this host's wave | skip, waiting for wave | 0 |
//! | `latest`/`stable`: quarantined, no `--force` | skip, quarantined | 0 |
//! | current is Deprecated or above `MaxVersion` | move to the highest Active allowed version, downgrading if needed | — |

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::Serialize;

use crate::artifact::Sha256;
use crate::manifest::{Manifest, Offer, Status};
use crate::platform::Platform;
use crate::rollout::Seed;
use crate::version::{Version, VersionError};

/// What the operator or the schedule asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The highest Active version offering this platform that the host's wave allows.
    Latest,
    /// The manifest's `Stable` version.
    Stable,
    /// One version, named by the operator. Waves do not apply.
    Exact(Version),
}

impl FromStr for Target {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "latest" => Ok(Target::Latest),
            "stable" => Ok(Target::Stable),
            v => v.parse().map(Target::Exact),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Latest => f.write_str("latest"),
            Target::Stable => f.write_str("stable"),
            Target::Exact(v) => v.fmt(f),
        }
    }
}

/// Everything a resolution depends on.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// The package to resolve, normally `molt-agent`.
    pub package: &'a str,
    pub platform: Platform,
    /// The version running now; `None` on a first install.
    pub current: Option<&'a Version>,
    pub target: &'a Target,
    pub allow_downgrade: bool,
    /// Reinstall the current version, or retry a quarantined one.
    pub force: bool,
    /// Take `latest`/`stable` now, whatever this host's wave says.
    pub ignore_waves: bool,
    /// Versions that failed their health check on this host before.
    pub quarantined: &'a BTreeSet<Version>,
    pub now: Timestamp,
    pub seed: Seed,
}

/// The outcome of a resolution that was not refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Install(Plan),
    Skip(Skip),
}

/// Why a version is to be installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallReason {
    /// Nothing is installed yet.
    FirstInstall,
    Upgrade,
    /// An older version, allowed by `--allow-downgrade`.
    Downgrade,
    /// The current version was recalled (Deprecated); moving to the highest Active one.
    Recall,
    /// The current version is above the manifest's `MaxVersion`.
    AboveMaxVersion,
    /// The same version again, because of `--force`.
    Reinstall,
}

impl fmt::Display for InstallReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InstallReason::FirstInstall => "first install",
            InstallReason::Upgrade => "upgrade",
            InstallReason::Downgrade => "downgrade (allowed by --allow-downgrade)",
            InstallReason::Recall => "the current version was recalled (Deprecated)",
            InstallReason::AboveMaxVersion => {
                "the current version is above the manifest's MaxVersion"
            }
            InstallReason::Reinstall => "reinstall (--force)",
        })
    }
}

/// What to install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub package: String,
    pub from: Option<Version>,
    pub to: Version,
    pub reason: InstallReason,
    pub platform: Platform,
    /// The archive's file name, e.g. `molt-agent-linux-amd64.tar.gz`.
    pub file: String,
    /// The TUF target name, `<package>/<version>/<file>`.
    pub target_name: String,
    pub checksum: Option<Sha256>,
    pub size: Option<u64>,
    /// When this host became (or becomes) eligible under the version's rollout, if it has one.
    pub wave_time: Option<Timestamp>,
}

/// Why nothing is to be done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum SkipReason {
    /// The current version is the target.
    UpToDate,
    /// The current version is newer than the newest version offered (e.g. it is now
    /// Inactive); hosts on it stay.
    AheadOfLatest { latest: Version },
    /// A newer version exists, but this host's wave has not come yet.
    WaitingForWave {
        version: Version,
        at: Option<Timestamp>,
    },
    /// A newer version exists, but it failed its health check on this host before.
    Quarantined { version: Version },
    /// A newer version exists, but its rollout is halted in this region.
    Halted { version: Version, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skip {
    pub package: String,
    pub current: Option<Version>,
    #[serde(flatten)]
    pub reason: SkipReason,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cur = self
            .current
            .as_ref()
            .map_or_else(|| "nothing".to_owned(), ToString::to_string);
        match &self.reason {
            SkipReason::UpToDate => write!(
                f,
                "{} {cur} is already installed; nothing to do",
                self.package
            ),
            SkipReason::AheadOfLatest { latest } => write!(
                f,
                "{} {cur} is newer than the latest Active version {latest}; staying on {cur}",
                self.package
            ),
            SkipReason::WaitingForWave {
                version,
                at: Some(at),
            } => write!(
                f,
                "{} {version} is rolling out; this host's wave starts at {}; staying on {cur} (use --ignore-waves to update now)",
                self.package,
                at.strftime("%Y-%m-%dT%H:%M:%SZ")
            ),
            SkipReason::WaitingForWave { version, at: None } => write!(
                f,
                "{} {version} is rolling out, but its waves do not reach this host yet; staying on {cur} (use --ignore-waves to update now)",
                self.package
            ),
            SkipReason::Quarantined { version } => write!(
                f,
                "{} {version} failed its health check on this host before and is quarantined; staying on {cur} (use --force to retry it)",
                self.package
            ),
            SkipReason::Halted { version, reason } => write!(
                f,
                "{} {version} is halted in this region ({reason}); staying on {cur}",
                self.package
            ),
        }
    }
}

/// A rule refused the request. Every refusal exits with code 3.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum Refusal {
    #[error("the manifest has no package {package}")]
    PackageMissing { package: String },
    #[error("{package} target version {version} is not in the manifest")]
    NotInManifest { package: String, version: Version },
    #[error("{package} target version {version} is unsupported on current platform ({platform})")]
    UnsupportedPlatform {
        package: String,
        version: String,
        platform: Platform,
    },
    #[error(
        "Updating {package} from {from} to an older version {to}, please enable allow downgrade to proceed"
    )]
    Downgrade {
        package: String,
        from: Version,
        to: Version,
    },
    #[error("{package} target version {version} is Inactive and is not offered for installation")]
    Inactive { package: String, version: Version },
    #[error("the rollout of {package} {version} is halted in this region ({reason})")]
    Halted {
        package: String,
        version: Version,
        reason: String,
    },
    #[error(
        "{package} target version {version} was recalled (Deprecated) and is not offered for installation"
    )]
    Recalled { package: String, version: Version },
    #[error(
        "{package} target version {version} has status {status:?}, which this updater does not know; it is not installable"
    )]
    UnknownStatus {
        package: String,
        version: Version,
        status: String,
    },
    #[error("{package} target version {version} is above the manifest's MaxVersion {max}")]
    AboveMaxVersion {
        package: String,
        version: Version,
        max: Version,
    },
    #[error(
        "{package} target version {version} failed its health check on this host before and is quarantined; pass --force to retry it"
    )]
    Quarantined { package: String, version: Version },
    #[error("the manifest has no Stable version; use --target-version latest or a version")]
    NoStable,
    #[error("no Active version of {package} is offered for {platform}")]
    NoActiveVersion { package: String, platform: Platform },
}

impl Refusal {
    /// Refusals by a rule exit with 3 (SPEC §6).
    pub const EXIT_CODE: i32 = 3;

    /// A hint for the operator, when there is a fix to suggest.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Refusal::Downgrade { .. } => Some("pass --allow-downgrade to install an older version"),
            Refusal::UnsupportedPlatform { .. } => {
                Some("check --platform, or publish a package for this platform")
            }
            Refusal::NotInManifest { .. } => Some(
                "list the versions with `release-manifest verify` or pick one that is published",
            ),
            Refusal::Quarantined { .. } => Some("pass --force to retry a quarantined version"),
            Refusal::Halted { .. } => Some(
                "the release engineers halted this rollout; wait for `release-manifest rollout resume`, or pass --force to install it anyway",
            ),
            Refusal::AboveMaxVersion { .. } | Refusal::Recalled { .. } => {
                Some("this version was withdrawn fleet-wide; pick a lower Active version")
            }
            _ => None,
        }
    }
}

/// Decides what `req` resolves to in `manifest`.
pub fn resolve(manifest: &Manifest, req: &Request<'_>) -> Result<Decision, Refusal> {
    let package = req.package.to_owned();
    if manifest.package(req.package).is_none() {
        return Err(Refusal::PackageMissing { package });
    }
    let recall_reason = req.current.and_then(|c| recall_of(manifest, req, c));
    match req.target {
        Target::Exact(version) => resolve_exact(manifest, req, version, recall_reason),
        Target::Stable => {
            let stable = manifest.stable.as_ref().ok_or(Refusal::NoStable)?;
            // Stable must be installable like an explicit target, then waves and
            // quarantine apply as for `latest`.
            let offer = check_offer(manifest, req, stable)?;
            resolve_moving(req, vec![offer], recall_reason)
        }
        Target::Latest => {
            let candidates: Vec<Offer<'_>> = manifest
                .offers(req.package, req.platform)
                .into_iter()
                .filter(|o| o.entry.status == Status::Active)
                .filter(|o| {
                    manifest
                        .max_version
                        .as_ref()
                        .is_none_or(|m| &o.entry.version <= m)
                })
                .collect();
            if candidates.is_empty() {
                let offered_elsewhere = !manifest.versions(req.package).is_empty();
                return Err(
                    if offered_elsewhere && manifest.offers(req.package, req.platform).is_empty() {
                        Refusal::UnsupportedPlatform {
                            package,
                            version: "latest".to_owned(),
                            platform: req.platform,
                        }
                    } else {
                        Refusal::NoActiveVersion {
                            package,
                            platform: req.platform,
                        }
                    },
                );
            }
            resolve_moving(req, candidates, recall_reason)
        }
    }
}

/// Why the current version must be left even without a newer one: it was recalled, or it
/// is above the fleet-wide ceiling.
fn recall_of(manifest: &Manifest, req: &Request<'_>, current: &Version) -> Option<InstallReason> {
    if manifest.status_of(req.package, current, req.platform) == Some(Status::Deprecated) {
        Some(InstallReason::Recall)
    } else if manifest.max_version.as_ref().is_some_and(|m| current > m) {
        Some(InstallReason::AboveMaxVersion)
    } else {
        None
    }
}

/// The checks an explicitly named version must pass: present, for this platform, Active,
/// not above `MaxVersion`.
fn check_offer<'m>(
    manifest: &'m Manifest,
    req: &Request<'_>,
    version: &Version,
) -> Result<Offer<'m>, Refusal> {
    let package = req.package.to_owned();
    if !manifest.versions(req.package).contains_key(version) {
        return Err(Refusal::NotInManifest {
            package,
            version: version.clone(),
        });
    }
    let Some(offer) = manifest.offer(req.package, version, req.platform) else {
        return Err(Refusal::UnsupportedPlatform {
            package,
            version: version.to_string(),
            platform: req.platform,
        });
    };
    match &offer.entry.status {
        Status::Active => {}
        Status::Inactive => {
            return Err(Refusal::Inactive {
                package,
                version: version.clone(),
            });
        }
        Status::Deprecated => {
            return Err(Refusal::Recalled {
                package,
                version: version.clone(),
            });
        }
        Status::Other(s) => {
            return Err(Refusal::UnknownStatus {
                package,
                version: version.clone(),
                status: s.clone(),
            });
        }
    }
    if let Some(h) = offer.entry.halted.as_ref().filter(|_| !req.force) {
        return Err(Refusal::Halted {
            package,
            version: version.clone(),
            reason: h.reason.clone(),
        });
    }
    if let Some(max) = manifest.max_version.as_ref().filter(|m| version > *m) {
        return Err(Refusal::AboveMaxVersion {
            package,
            version: version.clone(),
            max: max.clone(),
        });
    }
    Ok(offer)
}

fn resolve_exact(
    manifest: &Manifest,
    req: &Request<'_>,
    version: &Version,
    recall_reason: Option<InstallReason>,
) -> Result<Decision, Refusal> {
    if req.current == Some(version) && !req.force {
        return Ok(Decision::Skip(skip(req, SkipReason::UpToDate)));
    }
    let offer = check_offer(manifest, req, version)?;
    let reason = match req.current {
        None => InstallReason::FirstInstall,
        Some(c) if version == c => InstallReason::Reinstall,
        Some(c) if version > c => InstallReason::Upgrade,
        Some(c) => match recall_reason {
            Some(r) => r,
            None if req.allow_downgrade => InstallReason::Downgrade,
            None => {
                return Err(Refusal::Downgrade {
                    package: req.package.to_owned(),
                    from: c.clone(),
                    to: version.clone(),
                });
            }
        },
    };
    if req.quarantined.contains(version) && !req.force {
        return Err(Refusal::Quarantined {
            package: req.package.to_owned(),
            version: version.clone(),
        });
    }
    Ok(Decision::Install(plan(req, &offer, reason)))
}

/// `latest` and `stable`: pick the highest candidate this host may take now.
fn resolve_moving(
    req: &Request<'_>,
    mut candidates: Vec<Offer<'_>>,
    recall_reason: Option<InstallReason>,
) -> Result<Decision, Refusal> {
    candidates.sort_by(|a, b| b.entry.version.cmp(&a.entry.version));
    // Waves do not hold a host back from leaving a recalled version, and a host with no
    // agent at all takes the best version it can get rather than none.
    let waves_apply = !req.ignore_waves && recall_reason.is_none();
    let mut held_back: Option<SkipReason> = None;
    let mut chosen: Option<&Offer<'_>> = None;
    for offer in &candidates {
        let v = &offer.entry.version;
        if req.quarantined.contains(v) && !req.force {
            held_back.get_or_insert(SkipReason::Quarantined { version: v.clone() });
            continue;
        }
        if let Some(h) = &offer.entry.halted {
            held_back.get_or_insert(SkipReason::Halted {
                version: v.clone(),
                reason: h.reason.clone(),
            });
            continue;
        }
        if waves_apply
            && let Some(rollout) = &offer.entry.rollout
            && !rollout.is_eligible(req.seed, req.now)
        {
            held_back.get_or_insert(SkipReason::WaitingForWave {
                version: v.clone(),
                at: rollout.eligible_at(req.seed),
            });
            continue;
        }
        chosen = Some(offer);
        break;
    }
    if chosen.is_none() && req.current.is_none() {
        // First install and every candidate waits for a wave: take the highest one that is
        // not quarantined anyway.
        chosen = candidates.iter().find(|o| {
            o.entry.halted.is_none() && (!req.quarantined.contains(&o.entry.version) || req.force)
        });
    }
    let pending = |held_back: Option<SkipReason>, current: &Version| {
        held_back.filter(|h| match h {
            SkipReason::Quarantined { version }
            | SkipReason::WaitingForWave { version, .. }
            | SkipReason::Halted { version, .. } => version > current,
            _ => false,
        })
    };
    let Some(offer) = chosen else {
        // Everything is held back.
        let current = req.current;
        return match (held_back, current) {
            (Some(h), Some(c)) => Ok(Decision::Skip(skip(
                req,
                pending(Some(h), c).unwrap_or(SkipReason::UpToDate),
            ))),
            (Some(h), None) => Ok(Decision::Skip(skip(req, h))),
            (None, _) => Err(Refusal::NoActiveVersion {
                package: req.package.to_owned(),
                platform: req.platform,
            }),
        };
    };
    let to = &offer.entry.version;
    let reason = match req.current {
        None => InstallReason::FirstInstall,
        Some(c) if to > c => InstallReason::Upgrade,
        Some(c) if to == c => {
            if req.force {
                InstallReason::Reinstall
            } else {
                let why = pending(held_back, c).unwrap_or(SkipReason::UpToDate);
                return Ok(Decision::Skip(skip(req, why)));
            }
        }
        Some(c) => match recall_reason {
            Some(r) => r,
            None if matches!(req.target, Target::Stable) && !req.allow_downgrade => {
                return Err(Refusal::Downgrade {
                    package: req.package.to_owned(),
                    from: c.clone(),
                    to: to.clone(),
                });
            }
            None if req.allow_downgrade => InstallReason::Downgrade,
            None => {
                return Ok(Decision::Skip(skip(
                    req,
                    SkipReason::AheadOfLatest { latest: to.clone() },
                )));
            }
        },
    };
    Ok(Decision::Install(plan(req, offer, reason)))
}

fn skip(req: &Request<'_>, reason: SkipReason) -> Skip {
    Skip {
        package: req.package.to_owned(),
        current: req.current.cloned(),
        reason,
    }
}

fn plan(req: &Request<'_>, offer: &Offer<'_>, reason: InstallReason) -> Plan {
    let version = offer.entry.version.clone();
    Plan {
        package: offer.package.name.clone(),
        from: req.current.cloned(),
        reason,
        platform: offer.platform,
        file: offer.file.name.clone(),
        target_name: crate::artifact::target_name(&offer.package.name, &version, &offer.file.name),
        checksum: offer.entry.checksum,
        size: offer.entry.size,
        wave_time: offer
            .entry
            .rollout
            .as_ref()
            .and_then(|r| r.eligible_at(req.seed)),
        to: version,
    }
}

#[cfg(test)]
mod tests;
