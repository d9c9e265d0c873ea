//! `agent diagnose`: each check of `agent status`, and a few more, as pass, warn or fail,
//! with a hint for each problem. Exit status 1 when any check fails.

use std::process::Command;
use std::time::Duration;

use jiff::Timestamp;
use molt_fetch::s3::S3Location;
use serde::Serialize;

use crate::launch;
use crate::settings::AgentSettings;
use crate::status::{self, Fact};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Pass,
    Warn,
    Fail,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
    pub hint: Option<String>,
}

fn check(name: &'static str, level: Level, detail: impl Into<String>, hint: Option<&str>) -> Check {
    Check {
        name,
        level,
        detail: detail.into(),
        hint: hint.map(str::to_owned),
    }
}

/// Runs a program with a time limit; its exit success, stdout and stderr.
fn run_limited(cmd: &mut Command, limit: Duration) -> Result<(bool, String, String), String> {
    molt_host::process::run_bounded(cmd, limit)
        .map(|ran| (ran.status.success(), ran.stdout, ran.stderr))
        .map_err(|e| molt_schema::cli::one_line(&e))
}

/// The `error:` and `hint:` lines of a molt binary's failure output.
fn failure_lines(stderr: &str) -> (String, Option<String>) {
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .map(|l| l.trim_start_matches("error:").trim().to_owned())
        .unwrap_or_else(|| stderr.trim().lines().last().unwrap_or("failed").to_owned());
    let hint = stderr
        .lines()
        .find(|l| l.starts_with("hint:"))
        .map(|l| l.trim_start_matches("hint:").trim().to_owned());
    (error, hint)
}

pub async fn diagnose(settings: &AgentSettings) -> Vec<Check> {
    let now = Timestamp::now();
    let layout = &settings.layout;
    let mut out = Vec::new();

    out.push(if settings.config_exists {
        check(
            "config",
            Level::Pass,
            format!("{} is valid", settings.config_path.display()),
            None,
        )
    } else {
        check(
            "config",
            Level::Warn,
            format!(
                "{} does not exist; running on defaults",
                settings.config_path.display()
            ),
            Some("write the config (docs/operations.md lists every key)"),
        )
    });

    out.push(match layout.current_version() {
        Some(v) if layout.is_valid(&v) => check("install", Level::Pass, format!("current is {v}"), None),
        Some(v) => check(
            "install",
            Level::Fail,
            format!("current points at {v}, which has no .valid marker"),
            Some("run `updater recover`, then `updater --target-version latest --force`"),
        ),
        None => check(
            "install",
            Level::Fail,
            format!("nothing is installed under {}", layout.root().display()),
            Some("install with the install script, or `updater --trusted-root FILE --target-version latest`"),
        ),
    });

    let updater = launch::updater_program(settings);
    out.push(match &updater {
        Some(p) => match run_limited(Command::new(p).arg("--version"), Duration::from_secs(10)) {
            Ok((true, stdout, _)) => check(
                "updater",
                Level::Pass,
                format!("{} ({})", stdout.trim(), p.display()),
                None,
            ),
            Ok((false, _, stderr)) => check(
                "updater",
                Level::Fail,
                format!("{} --version failed: {}", p.display(), stderr.trim()),
                Some("reinstall the updater with the install script"),
            ),
            Err(e) => check(
                "updater",
                Level::Fail,
                format!("{} cannot run: {e}", p.display()),
                Some("reinstall the updater with the install script"),
            ),
        },
        None => check(
            "updater",
            Level::Fail,
            format!(
                "neither {} nor current/bin/updater exists",
                layout.updater_bin().display()
            ),
            Some("reinstall with the install script"),
        ),
    });

    let region = status::region(settings).await;
    let region_value = region.known().map(|r| r.region.clone());
    out.push(match &region {
        Fact::Known(r) => check(
            "region",
            Level::Pass,
            format!("{} (from {})", r.region, r.source),
            None,
        ),
        Fact::Unknown { error, hint } => check(
            "region",
            Level::Fail,
            error.clone(),
            Some(
                hint.as_deref()
                    .unwrap_or("set `region` in /etc/molt/agent.toml"),
            ),
        ),
    });

    let source = settings
        .config
        .source
        .as_ref()
        .map(|s| s.as_str().to_owned());
    let private = source.as_deref().is_some_and(|s| s.starts_with("s3://"));
    out.push(match &source {
        Some(s) => check("source", Level::Pass, s.clone(), None),
        None => check(
            "source",
            Level::Fail,
            "no repository source is configured",
            Some("set `source` (and `bucket`) in /etc/molt/agent.toml"),
        ),
    });

    let needs_credentials = private || settings.report.is_some();
    let creds = status::credentials(region_value.as_ref()).await;
    out.push(match (&creds, needs_credentials) {
        (Fact::Known(molt_fetch::aws::CredentialsSource::None), true) => check(
            "credentials",
            Level::Fail,
            "no AWS credentials found, and a private source or a report sink needs them",
            Some("attach an instance profile, or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile for the service"),
        ),
        (Fact::Known(s), _) => check("credentials", Level::Pass, s.to_string(), None),
        (Fact::Unknown { error, hint }, true) => check("credentials", Level::Fail, error.clone(), hint.as_deref()),
        (Fact::Unknown { error, .. }, false) => check(
            "credentials",
            Level::Pass,
            format!("not needed (public source, no report sink); the chain says: {error}"),
            None,
        ),
    });

    if let Some(r) = &settings.report {
        out.push(match r.parse::<S3Location>() {
            Ok(l) => check("report", Level::Pass, format!("reports go to {l}"), None),
            Err(e) => check(
                "report",
                Level::Fail,
                e.to_string(),
                Some("write `report = \"s3://bucket/prefix\"`"),
            ),
        });
    }

    out.push(match status::trust(settings, region_value.as_ref(), now) {
        Fact::Known(t) if t.expired => check(
            "trust",
            Level::Fail,
            format!("the {} metadata expired at {}", t.expiring_role, t.earliest_expiry),
            Some("the publisher must run `release-manifest refresh`; until then no update can verify"),
        ),
        Fact::Known(t) => check(
            "trust",
            Level::Pass,
            format!("root v{}, earliest expiry {} ({})", t.root_version, t.earliest_expiry, t.expiring_role),
            None,
        ),
        Fact::Unknown { error, hint } => check("trust", Level::Warn, error, hint.as_deref()),
    });

    // The repository, as the updater sees it: a dry run resolves `latest` for real.
    if let Some(p) = &updater {
        let mut cmd = Command::new(p);
        cmd.args(["--target-version", "latest", "--dry-run"])
            .env("MOLT_ROOT", layout.root());
        if settings.config_exists {
            cmd.env("MOLT_CONFIG", &settings.config_path);
        }
        out.push(match run_limited(&mut cmd, Duration::from_secs(120)) {
            Ok((true, stdout, _)) => check(
                "repository",
                Level::Pass,
                stdout
                    .lines()
                    .last()
                    .unwrap_or("reachable and verified")
                    .trim()
                    .to_owned(),
                None,
            ),
            Ok((false, _, stderr)) => {
                let (error, hint) = failure_lines(&stderr);
                check("repository", Level::Fail, error, hint.as_deref())
            }
            Err(e) => check(
                "repository",
                Level::Fail,
                format!("`updater --dry-run` {e}"),
                Some(
                    "check the network path to the source (proxy settings: HTTPS_PROXY, NO_PROXY)",
                ),
            ),
        });
    }

    let info = status::schedule_info(settings, None, now, now);
    out.push(match crate::hold::current(settings) {
        Some(h) => check(
            "schedule",
            Level::Warn,
            format!("{}; {h}", info.schedule),
            Some("run `agent unhold` (or remove `hold = true`) to let scheduled updates run"),
        ),
        None => match (info.next_run, info.next_reason) {
            (Some(at), Some(reason)) => check(
                "schedule",
                Level::Pass,
                format!("{}; next run {at} ({reason})", info.schedule),
                None,
            ),
            _ => check(
                "schedule",
                Level::Warn,
                format!("{} has no next run", info.schedule),
                Some("fix `schedule` in the config"),
            ),
        },
    });
    out
}

pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let tag = match c.level {
            Level::Pass => "pass",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        out.push_str(&format!("[{tag}] {:<12} {}\n", c.name, c.detail));
        if let Some(h) = &c.hint
            && c.level != Level::Pass
        {
            out.push_str(&format!("       {:<12} hint: {h}\n", ""));
        }
    }
    out
}
