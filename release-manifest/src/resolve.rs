//! `release-manifest resolve`: the resolution rules, run against a manifest file, so an
//! operator can answer "why won't my host update?".

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Context as _;
use jiff::Timestamp;
use molt_schema::cli::{Failure, exit};
use molt_schema::manifest::Manifest;
use molt_schema::resolve::{Decision, Request, Target, resolve};
use molt_schema::rollout::Seed;
use molt_schema::{Platform, Version};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The region's manifest.json.
    #[arg(long)]
    manifest: PathBuf,
    /// The host's platform, e.g. linux-amd64.
    #[arg(long)]
    platform: Platform,
    /// The version the host runs now; omit for a first install.
    #[arg(long)]
    current: Option<Version>,
    /// latest, stable, or a version.
    #[arg(long)]
    target: Target,
    /// Allow moving to an older version.
    #[arg(long)]
    allow_downgrade: bool,
    /// Reinstall the same version, or retry a quarantined one.
    #[arg(long)]
    force: bool,
    /// Ignore in-region rollout waves.
    #[arg(long)]
    ignore_waves: bool,
    /// A version that failed its health check on the host (repeatable).
    #[arg(long = "quarantined", value_name = "VERSION")]
    quarantined: Vec<Version>,
    /// The host's seed in 0..2048 (see `agent status`). Without it, waves are not applied.
    #[arg(long, value_parser = parse_seed)]
    seed: Option<Seed>,
    /// Resolve as of this time (RFC 3339) instead of now.
    #[arg(long)]
    now: Option<Timestamp>,
    /// The package to resolve.
    #[arg(long, default_value = "molt-agent")]
    package: String,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_seed(s: &str) -> Result<Seed, String> {
    let n: u64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    Seed::new(n).map_err(|e| e.to_string())
}

pub fn run(args: Args) -> Result<i32, Failure> {
    let bytes = std::fs::read(&args.manifest)
        .with_context(|| format!("cannot read manifest {}", args.manifest.display()))?;
    let manifest = Manifest::parse(&bytes)
        .with_context(|| format!("{} is not a usable manifest", args.manifest.display()))?;
    let quarantined: BTreeSet<Version> = args.quarantined.iter().cloned().collect();
    let now = args.now.unwrap_or_else(Timestamp::now);
    let waves_applied = args.seed.is_some() && !args.ignore_waves;
    let req = Request {
        package: &args.package,
        platform: args.platform,
        current: args.current.as_ref(),
        target: &args.target,
        allow_downgrade: args.allow_downgrade,
        force: args.force,
        ignore_waves: !waves_applied,
        quarantined: &quarantined,
        now,
        // Without a seed, waves are off (above), so the value is never used for a decision.
        seed: args
            .seed
            .unwrap_or(Seed::new(0).map_err(|e| Failure::new(exit::FAILED, e))?),
    };
    let result = resolve(&manifest, &req);
    let time = |t: &Timestamp| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    if args.json {
        let out = match &result {
            Ok(decision) => {
                let mut v =
                    serde_json::to_value(decision).map_err(|e| Failure::new(exit::FAILED, e))?;
                v["waves_applied"] = json!(waves_applied);
                v["now"] = json!(time(&now));
                v
            }
            Err(refusal) => {
                let mut v =
                    serde_json::to_value(refusal).map_err(|e| Failure::new(exit::FAILED, e))?;
                v["decision"] = json!("refuse");
                v["message"] = json!(refusal.to_string());
                v["exit_code"] = json!(exit::REFUSED);
                v
            }
        };
        crate::print_json(&out)?;
        return Ok(if result.is_ok() {
            exit::OK
        } else {
            exit::REFUSED
        });
    }
    match result {
        Ok(Decision::Install(plan)) => {
            println!("decision:  install");
            println!("package:   {}", plan.package);
            println!(
                "from:      {}",
                plan.from
                    .as_ref()
                    .map_or_else(|| "(nothing installed)".to_owned(), ToString::to_string)
            );
            println!("to:        {}", plan.to);
            println!("reason:    {}", plan.reason);
            println!("platform:  {}", plan.platform);
            println!("file:      {}", plan.file);
            println!("target:    {}", plan.target_name);
            println!(
                "checksum:  {}",
                plan.checksum.map_or_else(
                    || "(none in manifest; TUF decides)".to_owned(),
                    |c| c.to_string()
                )
            );
            println!(
                "size:      {}",
                plan.size
                    .map_or_else(|| "(none in manifest)".to_owned(), |s| s.to_string())
            );
            let wave = match (&plan.wave_time, waves_applied) {
                (None, _) => "no rollout: eligible now".to_owned(),
                (Some(t), true) => time(t),
                (Some(t), false) if args.seed.is_some() => format!("{} (waves ignored)", time(t)),
                (Some(_), false) => "waves not applied (pass --seed)".to_owned(),
            };
            println!("wave time: {wave}");
            Ok(exit::OK)
        }
        Ok(Decision::Skip(skip)) => {
            println!("decision:  skip");
            println!("reason:    {skip}");
            Ok(exit::OK)
        }
        Err(refusal) => {
            let hint = refusal.hint();
            let mut failure = Failure::new(exit::REFUSED, refusal);
            if let Some(h) = hint {
                failure = failure.with_hint(h);
            }
            Err(failure)
        }
    }
}
