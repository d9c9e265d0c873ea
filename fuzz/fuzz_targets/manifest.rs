//! The manifest parser (`Manifest::parse`, what the updater runs on a downloaded
//! `manifest.json`) and the resolution rules (`resolve`) on whatever it accepts.
//!
//! - Any bytes are refused or parsed, never a panic.
//! - A parsed manifest's canonical form (`to_json`, what the release tool writes and signs)
//!   parses again, to the same canonical bytes.
//! - Every request the target derives from the manifest resolves without a panic, and an
//!   install it decides on obeys the rules of `molt_schema::resolve`: the version is
//!   offered for the platform, Active, not above `MaxVersion`, not quarantined or halted
//!   unless forced, and older than the current one only when allowed or recalled.

#![no_main]

use std::collections::BTreeSet;

use jiff::Timestamp;
use libfuzzer_sys::fuzz_target;
use molt_schema::manifest::{Manifest, Status};
use molt_schema::resolve::{Decision, InstallReason, Request, Target, resolve};
use molt_schema::rollout::Seed;
use molt_schema::{Platform, Version};

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = Manifest::parse(data) else {
        return;
    };
    let canonical = manifest.to_json();
    let reread = Manifest::parse(&canonical).unwrap_or_else(|e| {
        panic!(
            "the canonical form does not parse: {e}\n{}",
            String::from_utf8_lossy(&canonical)
        )
    });
    assert_eq!(
        String::from_utf8_lossy(&reread.to_json()),
        String::from_utf8_lossy(&canonical),
        "the canonical form is not stable"
    );
    exercise_rules(&manifest, fnv1a(data));
});

/// FNV-1a: the request's knobs (clock, seed, flags, quarantine) come from the input, so a
/// crash reproduces from its file.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn exercise_rules(m: &Manifest, hash: u64) {
    let mut versions: Vec<&Version> = Vec::new();
    let listed = m
        .packages
        .iter()
        .flat_map(|p| &p.files)
        .flat_map(|f| &f.available_versions)
        .map(|e| &e.version);
    for v in m.stable.iter().chain(m.max_version.iter()).chain(listed) {
        if versions.len() == 4 {
            break;
        }
        if !versions.contains(&v) {
            versions.push(v);
        }
    }
    let mut packages: Vec<&str> = m.packages.iter().take(2).map(|p| p.name.as_str()).collect();
    if !packages.contains(&"molt-agent") {
        packages.push("molt-agent");
    }
    let mut targets = vec![Target::Latest, Target::Stable];
    targets.extend(versions.iter().take(3).map(|v| Target::Exact((*v).clone())));
    let mut currents: Vec<Option<&Version>> = vec![None];
    currents.extend(versions.iter().take(3).map(|v| Some(*v)));
    let quarantined: BTreeSet<Version> = versions
        .get((hash % 8) as usize)
        .map(|v| (*v).clone())
        .into_iter()
        .collect();
    // Somewhere between 1970 and 2100, so rollouts are seen before, during and after.
    let now = Timestamp::from_second((hash >> 8) as i64 % 4_102_444_800).unwrap_or_default();
    let seed = Seed::wrapping((hash >> 40) as u16);

    let mut round = 0u32;
    for package in &packages {
        for platform in Platform::ALL {
            for target in &targets {
                for current in &currents {
                    let flags = hash.rotate_right(round);
                    round = (round + 3) % 64;
                    let req = Request {
                        package,
                        platform,
                        current: *current,
                        target,
                        allow_downgrade: flags & 1 != 0,
                        force: flags & 2 != 0,
                        ignore_waves: flags & 4 != 0,
                        quarantined: &quarantined,
                        now,
                        seed,
                    };
                    check_decision(m, &req);
                }
            }
        }
    }
}

fn check_decision(m: &Manifest, req: &Request<'_>) {
    let decision = match resolve(m, req) {
        Ok(d) => d,
        Err(refusal) => {
            let _ = (refusal.to_string(), refusal.hint());
            serde_json::to_string(&refusal).expect("a refusal serialises");
            return;
        }
    };
    serde_json::to_string(&decision).expect("a decision serialises");
    let plan = match decision {
        Decision::Install(plan) => plan,
        Decision::Skip(skip) => {
            let _ = skip.to_string();
            return;
        }
    };
    let ctx = || format!("{req:?} -> {plan:?}");
    assert_eq!(plan.package, req.package, "{}", ctx());
    assert_eq!(plan.platform, req.platform, "{}", ctx());
    assert_eq!(plan.from.as_ref(), req.current, "{}", ctx());
    let offer = m
        .offer(req.package, &plan.to, req.platform)
        .unwrap_or_else(|| panic!("not offered for the platform: {}", ctx()));
    assert_eq!(plan.file, offer.file.name, "{}", ctx());
    assert_eq!(offer.entry.status, Status::Active, "{}", ctx());
    if let Some(max) = &m.max_version {
        assert!(&plan.to <= max, "above MaxVersion: {}", ctx());
    }
    match req.target {
        Target::Exact(v) => assert_eq!(&plan.to, v, "{}", ctx()),
        Target::Stable => assert_eq!(Some(&plan.to), m.stable.as_ref(), "{}", ctx()),
        Target::Latest => {}
    }
    if !req.force {
        assert!(
            !req.quarantined.contains(&plan.to),
            "quarantined: {}",
            ctx()
        );
    }
    if offer.entry.halted.is_some() {
        assert!(
            req.force && matches!(req.target, Target::Exact(_)),
            "halted: {}",
            ctx()
        );
    }
    match req.current {
        None => assert_eq!(plan.reason, InstallReason::FirstInstall, "{}", ctx()),
        Some(c) if &plan.to == c => {
            assert_eq!(plan.reason, InstallReason::Reinstall, "{}", ctx());
            assert!(req.force, "reinstall without --force: {}", ctx());
        }
        Some(c) if &plan.to > c => assert_eq!(plan.reason, InstallReason::Upgrade, "{}", ctx()),
        Some(_) => match plan.reason {
            InstallReason::Downgrade => {
                assert!(req.allow_downgrade, "downgrade not allowed: {}", ctx());
            }
            InstallReason::Recall | InstallReason::AboveMaxVersion => {}
            other => panic!("an older version for {other:?}: {}", ctx()),
        },
    }
}
