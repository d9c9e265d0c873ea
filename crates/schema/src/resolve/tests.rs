//! Table tests for every rule, plus property tests.

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use super::*;
use crate::manifest::{FileEntry, Manifest, Package, Status, VersionEntry};
use crate::rollout::{Delay, Rollout, Wave};

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

fn t0() -> Timestamp {
    "2026-03-01T00:00:00Z".parse().unwrap()
}

/// A rollout that starts at t0: 10% at once over 10h, then everyone at 10h.
fn waves() -> Rollout {
    Rollout::new(
        t0(),
        vec![
            Wave {
                percent: 10,
                after: Delay(std::time::Duration::ZERO),
            },
            Wave {
                percent: 100,
                after: Delay(std::time::Duration::from_secs(36_000)),
            },
        ],
    )
    .unwrap()
}

struct Entry {
    version: &'static str,
    status: Status,
    platforms: &'static [Platform],
    rollout: Option<Rollout>,
}

fn e(version: &'static str, status: Status) -> Entry {
    Entry {
        version,
        status,
        platforms: &[Platform::LinuxAmd64, Platform::LinuxArm64],
        rollout: None,
    }
}

fn build(entries: Vec<Entry>) -> Manifest {
    let mut files: Vec<FileEntry> = Vec::new();
    for p in Platform::ALL {
        let name = format!("molt-agent-{}.{}", p, p.archive_kind().extension());
        let versions: Vec<VersionEntry> = entries
            .iter()
            .filter(|e| e.platforms.contains(&p))
            .map(|e| VersionEntry {
                version: v(e.version),
                checksum: Some(crate::Sha256::digest(e.version.as_bytes())),
                size: Some(1000),
                status: e.status.clone(),
                rollout: e.rollout.clone(),
                published: None,
                halted: None,
                extra: Default::default(),
            })
            .collect();
        if !versions.is_empty() {
            files.push(FileEntry {
                name,
                available_versions: versions,
                extra: Default::default(),
            });
        }
    }
    let mut m = Manifest::new("us-east-1".parse().unwrap());
    m.packages.push(Package {
        name: "molt-agent".into(),
        files,
        extra: Default::default(),
    });
    m
}

/// The default manifest of most rows: 1.0.0 … 1.3.0 Active, 1.4.0 Inactive, 1.5.0
/// Deprecated, 1.6.0 unknown status, 2.0.0 only for arm64.
fn standard() -> Manifest {
    let mut rows = vec![
        e("1.0.0", Status::Active),
        e("1.1.0", Status::Active),
        e("1.2.0", Status::Active),
        e("1.3.0", Status::Active),
        e("1.4.0", Status::Inactive),
        e("1.5.0", Status::Deprecated),
        e("1.6.0", Status::Other("Foo".into())),
    ];
    rows.push(Entry {
        platforms: &[Platform::LinuxArm64],
        ..e("2.0.0", Status::Active)
    });
    build(rows)
}

#[derive(Default, Clone)]
struct Flags {
    allow_downgrade: bool,
    force: bool,
    ignore_waves: bool,
    quarantined: &'static [&'static str],
    seed: u64,
    hours_after_t0: i64,
    platform: Option<Platform>,
}

fn run(m: &Manifest, current: Option<&str>, target: &str, f: &Flags) -> String {
    let current = current.map(v);
    let target: Target = target.parse().unwrap();
    let quarantined: BTreeSet<Version> = f.quarantined.iter().map(|s| v(s)).collect();
    let req = Request {
        package: "molt-agent",
        platform: f.platform.unwrap_or(Platform::LinuxAmd64),
        current: current.as_ref(),
        target: &target,
        allow_downgrade: f.allow_downgrade,
        force: f.force,
        ignore_waves: f.ignore_waves,
        quarantined: &quarantined,
        now: t0() + SignedDuration::from_hours(f.hours_after_t0),
        seed: Seed::new(f.seed).unwrap(),
    };
    summarize(&resolve(m, &req))
}

fn summarize(r: &Result<Decision, Refusal>) -> String {
    match r {
        Ok(Decision::Install(p)) => format!(
            "install {} {}",
            p.to,
            serde_json::to_value(p.reason).unwrap().as_str().unwrap()
        ),
        Ok(Decision::Skip(s)) => match &s.reason {
            SkipReason::UpToDate => "skip up_to_date".into(),
            SkipReason::AheadOfLatest { latest } => format!("skip ahead_of_latest {latest}"),
            SkipReason::WaitingForWave { version, .. } => {
                format!("skip waiting_for_wave {version}")
            }
            SkipReason::Quarantined { version } => format!("skip quarantined {version}"),
            SkipReason::Halted { version, .. } => format!("skip halted {version}"),
        },
        Err(refusal) => {
            let tag = serde_json::to_value(refusal).unwrap()["refusal"]
                .as_str()
                .unwrap()
                .to_owned();
            format!("refuse {tag}")
        }
    }
}

#[test]
fn rules_table() {
    let std = standard();
    let none = Flags::default();
    let down = Flags {
        allow_downgrade: true,
        ..Flags::default()
    };
    let force = Flags {
        force: true,
        ..Flags::default()
    };
    let arm = Flags {
        platform: Some(Platform::LinuxArm64),
        ..Flags::default()
    };
    let musl = Flags {
        platform: Some(Platform::LinuxMuslAmd64),
        ..Flags::default()
    };
    let q12 = Flags {
        quarantined: &["1.2.0", "1.3.0"],
        ..Flags::default()
    };
    let q13 = Flags {
        quarantined: &["1.3.0"],
        ..Flags::default()
    };
    let q13_force = Flags {
        quarantined: &["1.3.0"],
        force: true,
        ..Flags::default()
    };
    #[rustfmt::skip]
    let table: Vec<(&str, Option<&str>, &str, &Flags, &str)> = vec![
        // latest
        ("first install takes latest Active", None, "latest", &none, "install 1.3.0 first_install"),
        ("upgrade to highest Active", Some("1.0.0"), "latest", &none, "install 1.3.0 upgrade"),
        ("same version skips", Some("1.3.0"), "latest", &none, "skip up_to_date"),
        ("same version with force reinstalls", Some("1.3.0"), "latest", &force, "install 1.3.0 reinstall"),
        ("Inactive newer current stays", Some("1.4.0"), "latest", &none, "skip ahead_of_latest 1.3.0"),
        ("latest never offers unknown status", Some("1.3.0"), "latest", &none, "skip up_to_date"),
        ("Deprecated current moves down (recall)", Some("1.5.0"), "latest", &none, "install 1.3.0 recall"),
        ("platform-specific latest", Some("1.0.0"), "latest", &arm, "install 2.0.0 upgrade"),
        ("latest on a platform without packages", Some("1.0.0"), "latest", &musl, "refuse unsupported_platform"),
        ("quarantined latest is skipped", Some("1.2.0"), "latest", &q13, "skip quarantined 1.3.0"),
        ("quarantine falls back to a lower version", Some("1.0.0"), "latest", &q12, "install 1.1.0 upgrade"),
        ("force retries a quarantined version", Some("1.2.0"), "latest", &q13_force, "install 1.3.0 upgrade"),
        // explicit
        ("explicit upgrade", Some("1.0.0"), "1.2.0", &none, "install 1.2.0 upgrade"),
        ("explicit same version skips", Some("1.2.0"), "1.2.0", &none, "skip up_to_date"),
        ("explicit same version with force", Some("1.2.0"), "1.2.0", &force, "install 1.2.0 reinstall"),
        ("downgrade refused without flag", Some("1.3.0"), "1.1.0", &none, "refuse downgrade"),
        ("downgrade allowed with flag", Some("1.3.0"), "1.1.0", &down, "install 1.1.0 downgrade"),
        ("downgrade from a recalled version needs no flag", Some("1.5.0"), "1.1.0", &none, "install 1.1.0 recall"),
        ("missing version", Some("1.0.0"), "9.9.9", &none, "refuse not_in_manifest"),
        ("version without this platform", Some("1.0.0"), "2.0.0", &none, "refuse unsupported_platform"),
        ("unsupported platform", None, "1.2.0", &musl, "refuse unsupported_platform"),
        ("explicit Inactive refused", Some("1.0.0"), "1.4.0", &none, "refuse inactive"),
        ("explicit Deprecated refused", Some("1.0.0"), "1.5.0", &none, "refuse recalled"),
        ("explicit unknown status refused", Some("1.0.0"), "1.6.0", &none, "refuse unknown_status"),
        ("explicit quarantined refused", Some("1.0.0"), "1.3.0", &q13, "refuse quarantined"),
        ("explicit quarantined with force", Some("1.0.0"), "1.3.0", &q13_force, "install 1.3.0 upgrade"),
        ("explicit first install", None, "1.1.0", &none, "install 1.1.0 first_install"),
        // stable
        ("no Stable in manifest", Some("1.0.0"), "stable", &none, "refuse no_stable"),
    ];
    for (name, current, target, flags, want) in table {
        assert_eq!(run(&std, current, target, flags), want, "{name}");
    }
}

#[test]
fn stable_rules() {
    let mut m = standard();
    m.stable = Some(v("1.2.0"));
    let none = Flags::default();
    assert_eq!(
        run(&m, Some("1.0.0"), "stable", &none),
        "install 1.2.0 upgrade"
    );
    assert_eq!(run(&m, Some("1.2.0"), "stable", &none), "skip up_to_date");
    assert_eq!(run(&m, Some("1.3.0"), "stable", &none), "refuse downgrade");
    let down = Flags {
        allow_downgrade: true,
        ..Flags::default()
    };
    assert_eq!(
        run(&m, Some("1.3.0"), "stable", &down),
        "install 1.2.0 downgrade"
    );
    m.stable = Some(v("1.4.0"));
    assert_eq!(run(&m, Some("1.0.0"), "stable", &none), "refuse inactive");
    m.stable = Some(v("7.0.0"));
    assert_eq!(
        run(&m, Some("1.0.0"), "stable", &none),
        "refuse not_in_manifest"
    );
}

#[test]
fn max_version_rules() {
    let mut m = standard();
    m.max_version = Some(v("1.1.0"));
    let none = Flags::default();
    assert_eq!(
        run(&m, Some("1.0.0"), "latest", &none),
        "install 1.1.0 upgrade"
    );
    assert_eq!(
        run(&m, Some("1.0.0"), "1.2.0", &none),
        "refuse above_max_version"
    );
    // a host above the ceiling resolves down without --allow-downgrade
    assert_eq!(
        run(&m, Some("1.3.0"), "latest", &none),
        "install 1.1.0 above_max_version"
    );
    assert_eq!(
        run(&m, Some("1.3.0"), "1.0.0", &none),
        "install 1.0.0 above_max_version"
    );
    assert_eq!(run(&m, Some("1.1.0"), "latest", &none), "skip up_to_date");
}

#[test]
fn recall_with_nothing_to_go_to() {
    let m = build(vec![e("1.0.0", Status::Deprecated)]);
    assert_eq!(
        run(&m, Some("1.0.0"), "latest", &Flags::default()),
        "refuse no_active_version"
    );
}

#[test]
fn wave_rules() {
    let mut rows = vec![e("1.0.0", Status::Active)];
    rows.push(Entry {
        rollout: Some(waves()),
        ..e("1.1.0", Status::Active)
    });
    let m = build(rows);
    // seed 0 is the first host of wave 1: eligible at t0
    let early = Flags {
        seed: 0,
        ..Flags::default()
    };
    assert_eq!(
        run(&m, Some("1.0.0"), "latest", &early),
        "install 1.1.0 upgrade"
    );
    // seed 2000 is in the last wave: eligible at t0 + 10h
    let late = Flags {
        seed: 2000,
        hours_after_t0: 5,
        ..Flags::default()
    };
    assert_eq!(
        run(&m, Some("1.0.0"), "latest", &late),
        "skip waiting_for_wave 1.1.0"
    );
    let late_later = Flags {
        seed: 2000,
        hours_after_t0: 10,
        ..Flags::default()
    };
    assert_eq!(
        run(&m, Some("1.0.0"), "latest", &late_later),
        "install 1.1.0 upgrade"
    );
    // --ignore-waves and an explicit version bypass waves
    let ignore = Flags {
        ignore_waves: true,
        ..late.clone()
    };
    assert_eq!(
        run(&m, Some("1.0.0"), "latest", &ignore),
        "install 1.1.0 upgrade"
    );
    assert_eq!(
        run(&m, Some("1.0.0"), "1.1.0", &late),
        "install 1.1.0 upgrade"
    );
    // a host with no agent takes the version its wave has not reached rather than none
    let first = build(vec![Entry {
        rollout: Some(waves()),
        ..e("1.1.0", Status::Active)
    }]);
    assert_eq!(
        run(&first, None, "latest", &late),
        "install 1.1.0 first_install"
    );
    // ...but prefers an eligible one
    assert_eq!(
        run(&m, None, "latest", &late),
        "install 1.0.0 first_install"
    );
}

#[test]
fn wave_time_is_reported() {
    let m = build(vec![
        e("1.0.0", Status::Active),
        Entry {
            rollout: Some(waves()),
            ..e("1.1.0", Status::Active)
        },
    ]);
    let target = Target::Latest;
    let current = v("1.0.0");
    let q = BTreeSet::new();
    let req = Request {
        package: "molt-agent",
        platform: Platform::LinuxAmd64,
        current: Some(&current),
        target: &target,
        allow_downgrade: false,
        force: false,
        ignore_waves: false,
        quarantined: &q,
        now: t0(),
        seed: Seed::new(2000).unwrap(),
    };
    let Ok(Decision::Skip(skip)) = resolve(&m, &req) else {
        panic!("expected a skip")
    };
    assert_eq!(
        skip.reason,
        SkipReason::WaitingForWave {
            version: v("1.1.0"),
            at: Some(t0() + SignedDuration::from_hours(10))
        }
    );
    assert!(skip.to_string().contains("2026-03-01T10:00:00Z"), "{skip}");
}

#[test]
fn messages_match_the_spec() {
    let m = standard();
    let current = v("1.3.0");
    let target = Target::Exact(v("1.1.0"));
    let q = BTreeSet::new();
    let mut req = Request {
        package: "molt-agent",
        platform: Platform::LinuxAmd64,
        current: Some(&current),
        target: &target,
        allow_downgrade: false,
        force: false,
        ignore_waves: false,
        quarantined: &q,
        now: t0(),
        seed: Seed::new(1).unwrap(),
    };
    let err = resolve(&m, &req).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Updating molt-agent from 1.3.0 to an older version 1.1.0, please enable allow downgrade to proceed"
    );
    req.platform = Platform::DarwinArm64;
    req.current = None;
    let err = resolve(&m, &req).unwrap_err();
    assert_eq!(
        err.to_string(),
        "molt-agent target version 1.1.0 is unsupported on current platform (darwin-arm64)"
    );
}

#[test]
fn halted_versions_are_not_offered_and_hosts_on_them_stay() {
    let mut m = build(vec![
        e("1.0.0", Status::Active),
        e("1.1.0", Status::Active),
        e("2.0.0", Status::Active),
    ]);
    for f in &mut m.packages[0].files {
        for entry in &mut f.available_versions {
            if entry.version == v("2.0.0") {
                entry.halted = Some(crate::manifest::Halt {
                    at: t0(),
                    reason: "error rate in us-east-1".into(),
                });
            }
        }
    }
    let none = Flags::default();
    let force = Flags {
        force: true,
        ..Flags::default()
    };
    let rows = [
        // latest skips the halted version and takes the best one left
        (Some("1.0.0"), "latest", &none, "install 1.1.0 upgrade"),
        (Some("1.1.0"), "latest", &none, "skip halted 2.0.0"),
        // hosts already on it stay
        (Some("2.0.0"), "latest", &none, "skip ahead_of_latest 1.1.0"),
        // a first install never takes a halted version
        (None, "latest", &none, "install 1.1.0 first_install"),
        // an explicit target is refused, unless forced
        (Some("1.1.0"), "2.0.0", &none, "refuse halted"),
        (Some("1.1.0"), "2.0.0", &force, "install 2.0.0 upgrade"),
    ];
    for (current, target, flags, want) in rows {
        assert_eq!(
            run(&m, current, target, flags),
            want,
            "{current:?} → {target}"
        );
    }
    let skip = resolve(
        &m,
        &Request {
            package: "molt-agent",
            platform: Platform::LinuxAmd64,
            current: Some(&v("1.1.0")),
            target: &Target::Latest,
            allow_downgrade: false,
            force: false,
            ignore_waves: false,
            quarantined: &BTreeSet::new(),
            now: t0(),
            seed: Seed::new(1).unwrap(),
        },
    );
    let Ok(Decision::Skip(skip)) = skip else {
        panic!("{skip:?}")
    };
    assert_eq!(
        skip.to_string(),
        "molt-agent 2.0.0 is halted in this region (error rate in us-east-1); staying on 1.1.0"
    );
}

#[test]
fn package_missing() {
    let m = Manifest::new("us-east-1".parse().unwrap());
    assert_eq!(
        run(&m, None, "latest", &Flags::default()),
        "refuse package_missing"
    );
}

proptest! {
    /// Whatever the request, `latest` never installs an Inactive, Deprecated, unknown,
    /// above-MaxVersion or (unforced) quarantined version, and never downgrades a host
    /// whose version was not recalled unless allowed.
    #[test]
    fn latest_never_breaks_a_rule(
        current in proptest::option::of(0usize..8),
        max in proptest::option::of(0usize..8),
        quarantine in proptest::collection::btree_set(0usize..8, 0..3),
        allow_downgrade: bool,
        force: bool,
    ) {
        let names = ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0", "1.6.0", "2.0.0"];
        let mut m = standard();
        m.max_version = max.map(|i| v(names[i]));
        let current = current.map(|i| v(names[i]));
        let quarantined: BTreeSet<Version> = quarantine.iter().map(|&i| v(names[i])).collect();
        let req = Request {
            package: "molt-agent",
            platform: Platform::LinuxAmd64,
            current: current.as_ref(),
            target: &Target::Latest,
            allow_downgrade,
            force,
            ignore_waves: false,
            quarantined: &quarantined,
            now: t0(),
            seed: Seed::new(7).unwrap(),
        };
        if let Ok(Decision::Install(plan)) = resolve(&m, &req) {
            let status = m.status_of("molt-agent", &plan.to, Platform::LinuxAmd64);
            prop_assert_eq!(status, Some(Status::Active));
            if let Some(max) = &m.max_version { prop_assert!(&plan.to <= max); }
            if !force { prop_assert!(!quarantined.contains(&plan.to)); }
            if let Some(c) = current.as_ref().filter(|c| &plan.to < *c) {
                prop_assert!(allow_downgrade || matches!(plan.reason, InstallReason::Recall | InstallReason::AboveMaxVersion), "{} below {}", plan.to, c);
            }
        }
    }
}
