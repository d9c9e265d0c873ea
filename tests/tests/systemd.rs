//! molt's production path under a real systemd, booted in a container
//! ([`molt_tests::machine`]): the host installed by `scripts/install.sh` with the real units
//! of `agent/deploy/`, updated by hand and on its schedule through a transient unit, and
//! killed, restarted, rebooted and crash-looped in the middle of updates. Every test ends
//! on the host's state: `current` on a version with `.valid`, the agent of that version
//! healthy under the unit's `MainPID`, the unit active, and the history of what happened.
//!
//! The tests are ignored by the README's test command, which needs no container; run them
//! with `bash scripts/systemd-bed.sh` (CI does), which builds the container's root
//! filesystem and runs them one at a time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use molt_host::HostLayout;
use molt_host::state::{self, Health, HistoryRecord, Outcome};
use molt_schema::Version;
use molt_tests::fixture::{TestRepo, stamped_build, wait_for};
use molt_tests::machine::Machine;

const ROOT: &str = "/opt/molt";

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

/// The scripts and units a host is installed from, where install.sh finds them.
const SHARE: &str = "/usr/local/share/molt";

/// The units of `agent/deploy/`.
const UNITS: [&str; 5] = [
    "molt-agent.service",
    "molt-recover.service",
    "molt-recover.timer",
    "molt-update.service",
    "molt-update.path",
];

/// A machine with molt installed from `scripts/install.sh` at 1.0.0, from a repository
/// with real stamped builds of 1.0.0 and 2.0.0.
struct Bed {
    repo: TestRepo,
    m: Machine,
}

impl Bed {
    fn new() -> Bed {
        Bed::with_agent_config("schedule = \"rate(1 day)\"\n")
    }

    /// `agent` is the config's `[agent]` table.
    fn with_agent_config(agent: &str) -> Bed {
        let repo = TestRepo::new("us-east-1");
        for version in ["1.0.0", "2.0.0"] {
            let bin = stamped_build(version);
            repo.publish_programs(version, &bin.join("agent"), &bin.join("updater"));
        }
        let m = Machine::boot(&[repo.dir.path()]);
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        m.install_file(
            &src.join("scripts/install.sh"),
            &format!("{SHARE}/install.sh"),
            0o755,
        );
        for unit in UNITS {
            m.install_file(
                &src.join("agent/deploy").join(unit),
                &format!("{SHARE}/deploy/{unit}"),
                0o644,
            );
        }
        m.install_file(
            &stamped_build("1.0.0").join("updater"),
            "/root/updater",
            0o755,
        );
        m.write(
            "/etc/molt/agent.toml",
            &format!(
                "root = \"{ROOT}\"\nregion = \"us-east-1\"\nsource = \"{}\"\n\
                 trusted_root = \"/etc/molt/root.json\"\n\n[updater]\nservice = \"systemd\"\n\
                 soak = \"3s\"\nhealth_timeout = \"30s\"\n\n[agent]\n{agent}",
                repo.url()
            ),
        );
        // The recover timer every 3 s instead of every 5 minutes, so that a test waits
        // seconds for it. (One empty assignment resets every monotonic timer of the unit.)
        m.write(
            "/etc/systemd/system/molt-recover.timer.d/test.conf",
            "[Timer]\nOnBootSec=\nOnActiveSec=3s\nOnUnitActiveSec=3s\n\
             RandomizedDelaySec=0\nAccuracySec=1s\n",
        );
        let bed = Bed { repo, m };
        let out = bed.m.run(&format!(
            "bash {SHARE}/install.sh --region us-east-1 --source '{}' --trusted-root {} \
             --updater-file /root/updater --service systemd --target-version 1.0.0 2>&1",
            bed.repo.url(),
            bed.repo.trusted_root().display()
        ));
        assert!(
            out.contains("installed; the agent runs from /opt/molt/current"),
            "{out}"
        );
        bed
    }

    fn layout(&self) -> HostLayout {
        HostLayout::new(self.m.path(ROOT))
    }

    fn history(&self) -> Vec<HistoryRecord> {
        state::read_history(&self.layout().history()).unwrap_or_default()
    }

    fn health(&self) -> Option<Health> {
        state::read_json(&self.layout().health()).ok().flatten()
    }

    fn publish(&self, version: &str) {
        let bin = stamped_build(version);
        self.repo
            .publish_programs(version, &bin.join("agent"), &bin.join("updater"));
    }

    /// The host's state once nothing is left to do: no journal, `current` on a valid
    /// `version`, the unit active with its main process the healthy agent of `version`.
    /// Waits up to `limit` for it; panics with what differs.
    fn assert_settled_on(&self, version: &str, limit: Duration) -> u32 {
        let layout = self.layout();
        let want = v(version);
        let mut last = String::new();
        let found = wait_for(limit, || {
            let state = self.describe();
            last = state.clone();
            let current = layout.current_version();
            let pid = self.m.main_pid("molt-agent");
            let health = self.health();
            let ok = !layout.journal().exists()
                && current.as_ref() == Some(&want)
                && layout.is_valid(&want)
                && self.m.is_active("molt-agent") == "active"
                // Recovery at boot (a oneshot) brings the agent back before it exits and
                // lets go of the update lock: an update started before that is refused
                // with "another update in progress" (exit 6).
                && self.m.is_active("molt-recover.service") != "activating"
                && health.as_ref().is_some_and(|h| {
                    Some(h.pid) == pid
                        && h.version == want
                        && h.status == state::HealthStatus::Ready
                });
            ok.then_some(pid)
        });
        match found {
            Some(Some(pid)) => pid,
            _ => panic!("the host did not settle on {version} within {limit:?}: {last}"),
        }
    }

    /// What the host looks like, for failure messages.
    fn describe(&self) -> String {
        let layout = self.layout();
        format!(
            "current {:?}, journal {:?}, molt-agent {} (MainPID {:?}), health {:?}, last history {:?}",
            layout.current_version().map(|v| v.to_string()),
            std::fs::read_to_string(layout.journal()).ok(),
            self.m.is_active("molt-agent"),
            self.m.main_pid("molt-agent"),
            self.health()
                .map(|h| (h.version.to_string(), h.pid, h.status)),
            self.history()
                .last()
                .map(|r| (r.to.to_string(), r.result, r.reason.clone())),
        )
    }

    /// Starts `updater --target-version target` in a transient unit, as the agent does,
    /// with `env` set; the unit's name.
    fn start_update(&self, unit: &str, target: &str, args: &str, env: &[(&str, &str)]) {
        let setenv: String = env
            .iter()
            .map(|(k, v)| format!(" --setenv={k}={v}"))
            .collect();
        self.m.run(&format!(
            "systemd-run --unit={unit} --collect --quiet --setenv=MOLT_CONFIG=/etc/molt/agent.toml\
             {setenv} -- {ROOT}/bin/updater --target-version {target} {args}"
        ));
    }

    /// Waits until the unit's main process stopped itself at a `MOLT_TEST_STOP_AT`
    /// checkpoint; its pid (inside the machine).
    fn wait_stopped_at(&self, unit: &str, point: &str) -> u32 {
        let found = wait_for(Duration::from_secs(60), || {
            let pid = self.m.main_pid(unit)?;
            let stat = self.m.sh(&format!("cat /proc/{pid}/stat"));
            let text = String::from_utf8_lossy(&stat.stdout).into_owned();
            let state = text.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            (state == Some(Some('T'))).then_some(pid)
        });
        found.unwrap_or_else(|| {
            panic!(
                "{unit} never stopped at {point}: {}\n{}",
                self.describe(),
                self.m
                    .sh(&format!("journalctl -u {unit} --no-pager"))
                    .stdout
                    .escape_ascii()
            )
        })
    }

    /// `updater --target-version target` from a shell, as an operator runs it, again while
    /// another run holds the lock (exit 6, "try again later"); its output.
    fn update_by_hand(&self, target: &str, args: &str) -> String {
        self.m.run(&format!(
            "for i in $(seq 30); do {ROOT}/bin/updater --target-version {target} {args} 2>&1; \
             rc=$?; [ $rc -eq 6 ] || exit $rc; sleep 1; done; exit 6"
        ))
    }

    fn journal_of(&self, unit: &str) -> String {
        String::from_utf8_lossy(
            &self
                .m
                .sh(&format!("journalctl -u {unit} --no-pager -o cat"))
                .stdout,
        )
        .into_owned()
    }
}

#[test]
#[ignore = "needs a real systemd: run `bash scripts/systemd-bed.sh`"]
fn installed_by_install_sh_it_runs_under_systemd_and_updates_by_hand_and_on_schedule() {
    let bed = Bed::new();
    let first = bed.assert_settled_on("1.0.0", Duration::from_secs(30));
    assert_eq!(bed.m.is_active("molt-recover.timer"), "active");
    assert_eq!(bed.property_enabled("molt-agent.service"), "enabled");
    assert_eq!(bed.property_enabled("molt-recover.timer"), "enabled");
    let status = bed.m.run(&format!("{ROOT}/current/bin/agent status"));
    assert!(status.contains("1.0.0"), "{status}");

    // Every installed unit is clean for systemd-analyze.
    let verify = bed.m.sh(&format!(
        "systemd-analyze verify {} 2>&1",
        UNITS.map(|u| format!("/etc/systemd/system/{u}")).join(" ")
    ));
    let said = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success() && said.trim().is_empty(), "{said}");

    // The agent runs as molt, with no capabilities, in a sandbox systemd rates OK.
    let pid = bed.m.main_pid("molt-agent").unwrap();
    let proc_status = bed.m.run(&format!("cat /proc/{pid}/status"));
    let uid = bed.m.run("id -u molt").trim().to_owned();
    let field = |name: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(field("Uid:"), [uid.as_str(); 4], "{proc_status}");
    assert_eq!(field("CapEff:"), ["0000000000000000"], "{proc_status}");
    assert_eq!(field("CapPrm:"), ["0000000000000000"], "{proc_status}");
    let security = bed
        .m
        .run("systemd-analyze security molt-agent.service 2>&1 | tail -n 1");
    let exposure: f64 = security
        .split("molt-agent.service: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {security:?}"));
    assert!(exposure <= 4.9, "{security}");

    // The agent's logs are in the journal.
    let logs = bed.journal_of("molt-agent");
    assert!(logs.contains("1.0.0"), "journalctl -u molt-agent: {logs}");

    // By hand, as an operator would, from a shell on the host.
    let out = bed
        .m
        .sh(&format!("{ROOT}/bin/updater --target-version 2.0.0 2>&1"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let second = bed.assert_settled_on("2.0.0", Duration::from_secs(10));
    assert_ne!(first, second, "a new agent runs");
    let last = bed.history().pop().unwrap();
    assert_eq!(
        (last.to.clone(), last.result),
        (v("2.0.0"), Outcome::Success)
    );

    // On its schedule: the agent asks, and root's molt-update.service runs the updater.
    bed.publish("3.0.0");
    bed.m.write(
        "/etc/molt/agent.toml",
        &std::fs::read_to_string(bed.m.path("/etc/molt/agent.toml"))
            .unwrap()
            .replace(
                "schedule = \"rate(1 day)\"",
                "schedule = \"rate(5 seconds)\"\njitter = \"0s\"",
            ),
    );
    bed.m.run("systemctl reload molt-agent");
    bed.assert_settled_on("3.0.0", Duration::from_secs(120));
    let last = bed.history().pop().unwrap();
    assert_eq!(
        (last.to.clone(), last.result),
        (v("3.0.0"), Outcome::Success)
    );
    // The unprivileged agent asked, and root's molt-update.service ran the update.
    // (The updater prints its last line after the commit the host is seen settled on.)
    let run = wait_for(Duration::from_secs(20), || {
        let run = bed.journal_of("molt-update.service");
        run.contains("-> 3.0.0").then_some(run)
    });
    assert!(
        run.is_some(),
        "journalctl -u molt-update.service: {}",
        bed.journal_of("molt-update.service")
    );

    // The recover timer as shipped (without the tests' drop-in) is due on a machine that
    // was up long before it was installed (this container's uptime is the test machine's).
    bed.m.run(
        "rm -r /etc/systemd/system/molt-recover.timer.d && systemctl daemon-reload && \
         systemctl restart molt-recover.timer",
    );
    let next = bed
        .m
        .property("molt-recover.timer", "NextElapseUSecMonotonic");
    assert!(
        !next.is_empty() && next != "infinity" && next != "0",
        "molt-recover.timer is never due: NextElapseUSecMonotonic={next}"
    );
}

impl Bed {
    fn property_enabled(&self, unit: &str) -> String {
        String::from_utf8_lossy(&self.m.sh(&format!("systemctl is-enabled {unit}")).stdout)
            .trim()
            .to_owned()
    }
}

/// `systemctl kill -s KILL` of the update's unit at each point of an update: nobody logs
/// in, and the recover timer (and the agent unit's `ExecStartPre`) put the host right.
#[test]
#[ignore = "needs a real systemd: run `bash scripts/systemd-bed.sh`"]
fn a_killed_update_unit_is_repaired_by_the_recover_timer() {
    let bed = Bed::new();
    bed.assert_settled_on("1.0.0", Duration::from_secs(30));
    let mut on = "1.0.0";
    for (i, point) in [
        "downloaded",
        "installed",
        "stopping",
        "switching",
        "switched",
    ]
    .iter()
    .enumerate()
    {
        let target = if on == "1.0.0" { "2.0.0" } else { "1.0.0" };
        let unit = format!("molt-update-kill{i}");
        bed.start_update(
            &unit,
            target,
            "--allow-downgrade",
            &[("MOLT_TEST_STOP_AT", point)],
        );
        bed.wait_stopped_at(&unit, point);
        bed.m.run(&format!("systemctl kill -s KILL {unit}"));
        // Before the switch the old version stays; from `switching` on, recovery rolls
        // the unfinished switch back (SPEC's recovery rule): the old version either way.
        bed.assert_settled_on(on, Duration::from_secs(60));
        let last = bed.history().pop();
        if matches!(*point, "switching" | "switched") {
            let last = last.unwrap();
            assert_eq!(last.to, v(target), "{point}");
            assert_eq!(last.result, Outcome::RolledBack, "{point}: {last:?}");
        }
        // The next update goes through (once the agent's own `recover` request, which its
        // start after the repair may have made, has let go of the lock: exit 6).
        bed.update_by_hand(target, "--allow-downgrade");
        bed.assert_settled_on(target, Duration::from_secs(60));
        on = target;
    }
}

/// The agent unit's own `ExecStartPre` recovery runs inside the unit's start job: it must
/// neither start nor stop the unit (that would wait on itself until TimeoutStartSec).
#[test]
#[ignore = "needs a real systemd: run `bash scripts/systemd-bed.sh`"]
fn starting_the_agent_after_a_kill_mid_switch_does_not_wait_on_itself() {
    let bed = Bed::new();
    bed.assert_settled_on("1.0.0", Duration::from_secs(30));
    // No recover timer: the start alone must put the host right.
    bed.m.run("systemctl stop molt-recover.timer");
    bed.start_update(
        "molt-update-pre",
        "2.0.0",
        "",
        &[("MOLT_TEST_STOP_AT", "switched")],
    );
    bed.wait_stopped_at("molt-update-pre", "switched");
    bed.m.run("systemctl kill -s KILL molt-update-pre");
    assert_eq!(
        bed.layout().current_version(),
        Some(v("2.0.0")),
        "killed after the link moved"
    );
    assert_ne!(
        bed.m.is_active("molt-agent"),
        "active",
        "the old agent was stopped"
    );
    let started = Instant::now();
    bed.m.run("systemctl start molt-agent");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "systemctl start took {:?}",
        started.elapsed()
    );
    // ExecStartPre put current back before ExecStart, and the agent finishes the rest.
    bed.assert_settled_on("1.0.0", Duration::from_secs(60));
    let last = bed.history().pop().unwrap();
    assert_eq!(
        (last.to.clone(), last.result),
        (v("2.0.0"), Outcome::RolledBack)
    );
}

/// The machine loses power, or is shut down, in the middle of an update: it boots on a
/// valid version with a healthy agent.
#[test]
#[ignore = "needs a real systemd: run `bash scripts/systemd-bed.sh`"]
fn a_reboot_in_the_middle_of_an_update_comes_up_on_a_valid_version() {
    let mut bed = Bed::new();
    bed.assert_settled_on("1.0.0", Duration::from_secs(30));

    bed.start_update(
        "molt-update-plug",
        "2.0.0",
        "",
        &[("MOLT_TEST_STOP_AT", "switched")],
    );
    bed.wait_stopped_at("molt-update-plug", "switched");
    bed.m.pull_the_plug();
    bed.m.boot_again();
    bed.assert_settled_on("1.0.0", Duration::from_secs(60));
    let last = bed.history().pop().unwrap();
    assert_eq!(
        (last.to.clone(), last.result),
        (v("2.0.0"), Outcome::RolledBack)
    );

    bed.start_update(
        "molt-update-off",
        "2.0.0",
        "",
        &[("MOLT_TEST_STOP_AT", "switching")],
    );
    bed.wait_stopped_at("molt-update-off", "switching");
    bed.m.poweroff();
    bed.m.boot_again();
    bed.assert_settled_on("1.0.0", Duration::from_secs(60));
    assert_eq!(bed.m.boots(), 3);

    // And the host updates afterwards.
    bed.update_by_hand("2.0.0", "");
    bed.assert_settled_on("2.0.0", Duration::from_secs(60));
}

/// A version whose agent exits at start crash-loops under `Restart=always`: the update
/// is rolled back and quarantined, and the unit ends active on the old version.
#[test]
#[ignore = "needs a real systemd: run `bash scripts/systemd-bed.sh`"]
fn a_crash_looping_version_is_rolled_back_and_the_unit_stays_active() {
    let bed = Bed::new();
    bed.assert_settled_on("1.0.0", Duration::from_secs(30));
    let broken = bed.repo.dir.path().join("broken-agent");
    std::fs::write(
        &broken,
        "#!/bin/sh\ncase \"$*\" in\n  --version) echo \"agent 3.0.0\"; exit 0 ;;\n  \
         *check-config) exit 0 ;;\nesac\necho 'agent 3.0.0: broken on purpose' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    bed.repo
        .publish_programs("3.0.0", &broken, &stamped_build("2.0.0").join("updater"));
    let out = bed
        .m
        .sh(&format!("{ROOT}/bin/updater --target-version 3.0.0 2>&1"));
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{said}");
    bed.assert_settled_on("1.0.0", Duration::from_secs(30));
    let last = bed.history().pop().unwrap();
    assert_eq!(
        (last.to.clone(), last.result),
        (v("3.0.0"), Outcome::RolledBack)
    );
    assert!(last.reason.is_some(), "{last:?}");
    assert!(bed.layout().quarantine().exists(), "3.0.0 is quarantined");
    // Still active a while later: not left restarting, not failed.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        bed.m.is_active("molt-agent"),
        "active",
        "{}",
        bed.describe()
    );
    let pid = bed.assert_settled_on("1.0.0", Duration::from_secs(5));
    assert!(pid > 0);
}

/// `systemctl restart molt-agent` in the middle of an update (an operator, or config
/// management, restarting the agent). The update runs in its own unit and is not touched.
/// A restart is not the new version's fault: a restart before the switch only restarts the
/// old agent, and one during the soak is followed, the soak starting again on the new main
/// process once it reports ready (docs/operations.md). Either way the update commits with
/// a healthy new agent, and the unit is never left stopped.
#[test]
#[ignore = "needs a real systemd: run `bash scripts/systemd-bed.sh`"]
fn restarting_the_agent_in_the_middle_of_an_update_commits_it() {
    let bed = Bed::new();
    let first = bed.assert_settled_on("1.0.0", Duration::from_secs(30));

    // Before the switch: the updater is held after the install; the old agent restarts.
    bed.start_update(
        "molt-update-r1",
        "2.0.0",
        "",
        &[("MOLT_TEST_STOP_AT", "installed")],
    );
    bed.wait_stopped_at("molt-update-r1", "installed");
    bed.m.run("systemctl restart molt-agent");
    // (The journal of the held update is there: only the agent is checked.)
    let restarted = wait_for(Duration::from_secs(20), || {
        let h = bed.health()?;
        (h.version == v("1.0.0")
            && h.status == state::HealthStatus::Ready
            && bed.m.main_pid("molt-agent") == Some(h.pid))
        .then_some(h.pid)
    })
    .unwrap_or_else(|| panic!("no 1.0.0 agent after the restart: {}", bed.describe()));
    assert_ne!(first, restarted, "a new pid");
    bed.m.run("systemctl kill -s CONT molt-update-r1");
    bed.assert_settled_on("2.0.0", Duration::from_secs(60));
    let last = bed.history().pop().unwrap();
    assert_eq!(
        (last.to.clone(), last.result),
        (v("2.0.0"), Outcome::Success)
    );

    // During the soak (30 s here): restarted once the new agent reported ready.
    bed.start_update(
        "molt-update-r2",
        "1.0.0",
        "--allow-downgrade --soak 30s",
        &[],
    );
    let soaked = wait_for(Duration::from_secs(30), || {
        let h = bed.health()?;
        (h.version == v("1.0.0")
            && h.status == state::HealthStatus::Ready
            && bed.m.main_pid("molt-agent") == Some(h.pid))
        .then_some(h.pid)
    })
    .unwrap_or_else(|| panic!("the 1.0.0 agent never reported ready: {}", bed.describe()));
    bed.m.run("systemctl restart molt-agent");
    let after = bed.assert_settled_on("1.0.0", Duration::from_secs(90));
    assert_ne!(soaked, after, "the restart gave a new pid");
    let last = bed.history().pop().unwrap();
    assert_eq!(
        (last.to.clone(), last.result),
        (v("1.0.0"), Outcome::Success),
        "{last:?}"
    );
    let said = bed.journal_of("molt-update-r2");
    assert!(
        said.contains("not by its service manager's Restart="),
        "the updater says it followed the restart: {said}"
    );
    assert!(
        !bed.layout().quarantine().exists()
            || !std::fs::read_to_string(bed.layout().quarantine())
                .unwrap_or_default()
                .contains("1.0.0"),
        "a restart by hand does not quarantine the version"
    );
}

/// What a compromised agent (anything running as its user, `molt`) can do to root's part
/// of the host: nothing. It cannot write the install root, `state/`, `versions/` or
/// `bin/`, nor open the update lock; root never follows a link it plants, and a flood of
/// forged requests costs one run.
#[test]
#[ignore = "needs a real systemd: run `bash scripts/systemd-bed.sh`"]
fn a_hostile_agent_changes_nothing_root_owns() {
    let bed = Bed::new();
    bed.assert_settled_on("1.0.0", Duration::from_secs(30));
    let as_molt = |script: &str| {
        bed.m.sh(&format!(
            "setpriv --reuid=molt --regid=molt --init-groups -- /bin/sh -c '{script}' 2>&1"
        ))
    };
    let snapshot = || {
        bed.m.run(&format!(
            "find {ROOT}/state {ROOT}/versions {ROOT}/bin {ROOT}/current -printf '%p %s %m %u\\n' \
             | sort; sha256sum /etc/passwd /etc/shadow"
        ))
    };
    let before = snapshot();

    for attack in [
        format!("echo forged > {ROOT}/state/journal.json"),
        format!("rm -rf {ROOT}/state/tuf"),
        format!("rm -f {ROOT}/state/history.jsonl"),
        format!("flock -n {ROOT}/state/update.lock -c true"),
        format!("ln -sfn versions/2.0.0 {ROOT}/current"),
        format!("cp /bin/sh {ROOT}/bin/updater"),
        format!("mkdir {ROOT}/versions/9.9.9"),
        format!("echo x > {ROOT}/current/bin/agent"),
    ] {
        let out = as_molt(&attack);
        assert!(
            !out.status.success(),
            "as molt, `{attack}` succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    assert_eq!(snapshot(), before, "root's files are untouched");

    // Links planted where root writes (an operator's `agent hold`) or reads.
    let out = as_molt(&format!(
        "ln -s /etc/passwd {ROOT}/agent/hold.json && ln -sf /etc/shadow {ROOT}/agent/health.json"
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    bed.m.run(&format!(
        "{ROOT}/current/bin/agent hold --reason 'a change freeze' && {ROOT}/current/bin/agent status"
    ));
    let hold = bed.m.path(&format!("{ROOT}/agent/hold.json"));
    assert!(
        std::fs::symlink_metadata(&hold).unwrap().is_file(),
        "the hold replaced the link"
    );
    bed.m.run(&format!("{ROOT}/current/bin/agent unhold"));

    // The requests directory swapped for a link to / (root must not empty /), then for a
    // FIFO (root must not block on it). The service is started by hand here: through the
    // link the path unit would see / as a non-empty directory and fire until systemd's
    // trigger limit stops it (an agent can stop its own requests; nothing else).
    bed.m.run("systemctl stop molt-update.path");
    let out = as_molt(&format!(
        "rmdir {ROOT}/agent/requests && ln -s / {ROOT}/agent/requests"
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    bed.m.run("systemctl start molt-update.service || true");
    assert!(bed.m.path("/etc/passwd").exists() && bed.m.path("/usr/bin/sh").exists());
    let out = as_molt(&format!(
        "rm {ROOT}/agent/requests && mkfifo {ROOT}/agent/requests"
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let started = std::time::Instant::now();
    bed.m.run("systemctl start molt-update.service || true");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no hang on a FIFO"
    );
    let out = as_molt(&format!(
        "rm {ROOT}/agent/requests && mkdir {ROOT}/agent/requests"
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    bed.m.run("systemctl start molt-update.path");
    assert_eq!(bed.m.is_active("molt-update.path"), "active");

    // A flood of forged requests: 300 valid ones, a link, a directory, a huge file and a
    // request that names another target.
    let out = as_molt(&format!(
        "cd {ROOT}/agent && mkdir -p staging && i=0; while [ $i -lt 300 ]; do \
         printf \"{{\\\"version\\\":1,\\\"launch_id\\\":\\\"20261204T0300%03dZ-abcdef\\\",\\\"kind\\\":\\\"update\\\"}}\" $i > staging/$(printf 20261204T0300%03dZ-abcdef $i).json; i=$((i+1)); done; \
         ln -s /etc/shadow staging/link.json; mkdir -p staging/dir/sub; ln -s / staging/dir/sub/root; head -c 100000 /dev/zero > staging/big.json; \
         echo \"{{\\\"version\\\":1,\\\"launch_id\\\":\\\"20261204T039999Z-abcdef\\\",\\\"kind\\\":\\\"update\\\",\\\"target\\\":\\\"0.0.1\\\"}}\" > staging/target.json; \
         mv staging/* requests/ && rmdir staging"
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let emptied = wait_for(Duration::from_secs(60), || {
        let left = std::fs::read_dir(bed.m.path(&format!("{ROOT}/agent/requests")))
            .map(|d| d.count())
            .unwrap_or(0);
        (left == 0 && bed.m.is_active("molt-update.service") != "activating").then_some(())
    });
    assert!(
        emptied.is_some(),
        "the requests were taken: {}",
        bed.describe()
    );
    let runs = bed.journal_of("molt-update.service");
    assert_eq!(
        runs.matches("running `updater --target-version latest`")
            .count(),
        1,
        "one run for the whole flood: {runs}"
    );
    assert!(
        runs.contains("more requests in"),
        "the refusals are summed up: {runs}"
    );
    let flood_run = runs
        .rsplit("Starting molt-update.service")
        .next()
        .unwrap_or_default();
    assert!(
        flood_run.matches("refused a request").count() <= 10,
        "{flood_run}"
    );
    let result: molt_host::attempt::RunResult =
        state::read_json(&bed.layout().last_run()).unwrap().unwrap();
    assert_eq!(
        result.launch, "20261204T0300299Z-abcdef",
        "the newest valid request ran"
    );
    assert_ne!(bed.m.is_active("molt-update.path"), "failed");

    // The one run did what a request may ask: an update to the latest version root's own
    // config allows (2.0.0), nothing the requests named. No file a link pointed at changed.
    bed.assert_settled_on("2.0.0", Duration::from_secs(60));
    let after = bed.m.run("sha256sum /etc/passwd /etc/shadow");
    assert!(before.ends_with(&after), "{before}\n---\n{after}");
}

/// An image baked with molt installed, and an instance made from it (a copy of its root
/// filesystem with another machine id): the instance derives its own rollout seed instead
/// of landing in the image's wave.
#[test]
#[ignore = "needs a real systemd: run `bash scripts/systemd-bed.sh`"]
fn a_clone_of_a_baked_image_derives_its_own_rollout_seed() {
    let mut image = Bed::new();
    image.assert_settled_on("1.0.0", Duration::from_secs(30));
    let seed_file = image.layout().seed();
    let baked_seed = std::fs::read_to_string(&seed_file).unwrap();
    let baked_mid = std::fs::read_to_string(image.m.path("/etc/machine-id")).unwrap();
    assert_eq!(
        baked_seed.trim(),
        molt_host::seed::seed_from_identity(&baked_mid).to_string(),
        "the image's seed comes from its machine id"
    );
    image.m.poweroff();

    let new_mid = "5eed0000c10e0000000000000000c10e\n";
    let clone = Bed {
        m: image.m.clone_stopped(|rootfs| {
            std::fs::write(rootfs.join("etc/machine-id"), new_mid).unwrap();
        }),
        repo: image.repo,
    };
    clone.assert_settled_on("1.0.0", Duration::from_secs(30));
    let expected = molt_host::seed::seed_from_identity(new_mid).to_string();
    // The agent (unprivileged: it cannot persist it) derives the clone's seed at start...
    let said = wait_for(Duration::from_secs(20), || {
        let logs = clone.journal_of("molt-agent");
        logs.contains(&format!("rollout seed {expected} (MachineId)"))
            .then_some(logs)
    });
    assert!(said.is_some(), "{}", clone.journal_of("molt-agent"));
    // ...and the updater, the next time it runs, persists it with its new origin.
    clone.update_by_hand("latest", "");
    let seed_file = clone.layout().seed();
    assert_eq!(
        std::fs::read_to_string(&seed_file).unwrap().trim(),
        expected
    );
    let origin = molt_host::seed::origin(&seed_file).unwrap();
    assert_eq!(
        origin,
        molt_host::seed::Origin::of(Some(new_mid), None),
        "the origin is the clone's"
    );
    clone.assert_settled_on("2.0.0", Duration::from_secs(60));
}

/// Updates in quick succession (an operator trying versions, a rollback right after an
/// update): each stops and starts the agent's unit, more often than systemd's default start
/// limit (5 in 10 s) allows. None may fail for it, and the host never ends without an agent.
#[test]
#[ignore = "needs a real systemd: run `bash scripts/systemd-bed.sh`"]
fn updates_in_quick_succession_never_hit_the_start_limit() {
    let bed = Bed::new();
    bed.assert_settled_on("1.0.0", Duration::from_secs(30));
    let mut target = "2.0.0";
    for _ in 0..8 {
        bed.update_by_hand(target, "--allow-downgrade --soak 100ms");
        bed.assert_settled_on(target, Duration::from_secs(10));
        target = if target == "2.0.0" { "1.0.0" } else { "2.0.0" };
    }
}

/// install.sh run again on an installed host, as an operator types it: the root with a
/// trailing slash, the config by a relative path, beside the running agent. The units name
/// the root as it is, the agent keeps running, and the host updates afterwards.
#[test]
#[ignore = "needs a real systemd: run `bash scripts/systemd-bed.sh`"]
fn install_sh_again_with_a_trailing_slash_and_a_relative_config() {
    let bed = Bed::new();
    bed.assert_settled_on("1.0.0", Duration::from_secs(30));
    let out = bed.m.run(&format!(
        "cd /etc && bash {SHARE}/install.sh --region us-east-1 --source '{}' --trusted-root {} \
         --updater-file /root/updater --service systemd --root /opt/molt/ --config molt/agent.toml \
         --target-version 1.0.0 2>&1",
        bed.repo.url().trim_end_matches('/'),
        bed.repo.trusted_root().display()
    ));
    assert!(
        out.contains("keeping the existing config /etc/molt/agent.toml"),
        "{out}"
    );
    for unit in UNITS {
        let text =
            std::fs::read_to_string(bed.m.path(&format!("/etc/systemd/system/{unit}"))).unwrap();
        assert!(!text.contains("molt//"), "{unit}: {text}");
    }
    bed.assert_settled_on("1.0.0", Duration::from_secs(30));
    bed.update_by_hand("2.0.0", "");
    bed.assert_settled_on("2.0.0", Duration::from_secs(30));
}

/// The OS packages of `version` (published to `repo` already), built by
/// `scripts/package.sh` from the archive the release signs, into `<repo>/packages/`.
fn build_package(repo: &TestRepo, version: &str) {
    let platform = molt_schema::Platform::detect().unwrap().to_string();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = std::process::Command::new("bash")
        .arg(src.join("scripts/package.sh"))
        .args(["--version", version, "--platform", &platform])
        .arg("--dist")
        .arg(repo.dir.path().join(format!("dist-{version}")))
        .arg("--trusted-root")
        .arg(repo.trusted_root())
        .args(["--source", &repo.url()])
        .arg("--out")
        .arg(repo.dir.path().join("packages"))
        .arg("--fast")
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "package.sh {version}: {}",
        String::from_utf8_lossy(&built.stderr)
    );
}

/// The `.deb` and `.rpm` architectures of this machine.
fn package_arches() -> (&'static str, &'static str) {
    if molt_schema::Platform::detect()
        .unwrap()
        .to_string()
        .ends_with("arm64")
    {
        ("arm64", "aarch64")
    } else {
        ("amd64", "x86_64")
    }
}

/// Every path of the machine's own files: what a package may leave behind. Left out: the
/// kernel's and the runtime's file systems, `/tmp` (where the test's files are bound), the
/// logs, and dpkg's own records (it keeps the status of every package ever installed).
fn file_list(m: &Machine) -> Vec<String> {
    let listed = m.run(
        "find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
         -o -path /var/log -o -path /var/lib/dpkg \\) -prune -o -print | sort",
    );
    listed.lines().map(str::to_owned).collect()
}

impl Bed {
    fn dpkg(&self, args: &str) -> String {
        self.m.run(&format!(
            "DEBIAN_FRONTEND=noninteractive dpkg --force-confold {args} 2>&1"
        ))
    }

    fn assert_units(&self, active: &str, enabled: &str) {
        for unit in [
            "molt-agent.service",
            "molt-recover.timer",
            "molt-update.path",
        ] {
            assert_eq!(
                self.m.is_active(unit),
                active,
                "{unit}: {}",
                self.describe()
            );
            assert_eq!(self.property_enabled(unit), enabled, "{unit}");
        }
    }
}

/// The `.deb` as a host's operator uses it: `dpkg -i` on a new host (the package's version
/// through the updater's switch, the units enabled and started), an upgrade to a newer
/// `.deb` (handed to the switch), an older `.deb` (it steps aside), `dpkg -r` (stopped and
/// disabled, the state kept), installed again (the agent comes back) and `dpkg -P`, after
/// which nothing of molt is left but its user. Then the `.rpm`: its metadata, and installed
/// with `rpm -i --root` into the powered-off machine as an image builder would (no systemd
/// runs: the version is installed for the next boot), booted, and erased.
#[test]
#[ignore = "needs a real systemd: run `bash scripts/systemd-bed.sh`"]
fn the_packages_install_upgrade_step_aside_remove_and_purge() {
    let repo = TestRepo::new("us-east-1");
    for version in ["1.0.0", "2.0.0"] {
        let bin = stamped_build(version);
        repo.publish_programs(version, &bin.join("agent"), &bin.join("updater"));
        build_package(&repo, version);
    }
    // 3.0.0's agent fails at start.
    let broken = repo.dir.path().join("broken-agent");
    std::fs::write(
        &broken,
        "#!/bin/sh\ncase \"$*\" in\n  --version) echo \"agent 3.0.0\"; exit 0 ;;\n  \
         *check-config) exit 0 ;;\nesac\necho 'agent 3.0.0: broken on purpose' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    repo.publish_programs("3.0.0", &broken, &stamped_build("2.0.0").join("updater"));
    build_package(&repo, "3.0.0");
    let packages = repo.dir.path().join("packages");
    let (arch, rpm_arch) = package_arches();
    let deb = |v: &str| {
        packages
            .join(format!("molt_{v}_{arch}.deb"))
            .display()
            .to_string()
    };
    let mut bed = Bed {
        m: Machine::boot(&[repo.dir.path()]),
        repo,
    };
    let clean = file_list(&bed.m);
    assert!(
        bed.m.sh("id molt").status.code() != Some(0),
        "the base has no molt user"
    );

    // A host whose config management wrote the config first (a short soak for the test);
    // dpkg keeps it (--force-confold, as an unattended install would).
    bed.m.write(
        "/etc/molt/agent.toml",
        &format!(
            "region = \"us-east-1\"\nsource = \"{}\"\ntrusted_root = \"/usr/lib/molt/root.json\"\n\n\
             [updater]\nservice = \"systemd\"\nsoak = \"2s\"\nhealth_timeout = \"10s\"\n\n\
             [agent]\nschedule = \"rate(1 day)\"\n",
            bed.repo.url()
        ),
    );
    let out = bed.dpkg(&format!("-i {}", deb("1.0.0")));
    let first = bed.assert_settled_on("1.0.0", Duration::from_secs(60));
    bed.assert_units("active", "enabled");
    bed.m.run("id molt");
    let status = bed.m.run(&format!("{ROOT}/current/bin/agent status"));
    assert!(status.contains("1.0.0"), "{status}");
    let last = bed.history().pop().unwrap();
    assert_eq!(
        (last.to.clone(), last.result),
        (v("1.0.0"), Outcome::Success)
    );
    assert!(
        last.reason
            .as_deref()
            .unwrap_or("")
            .contains("from the OS package"),
        "{last:?}\n{out}"
    );

    // A newer .deb: its version goes through the switch, health check and soak. A unit the
    // operator disabled stays disabled.
    bed.m.run("systemctl disable --now molt-update.path 2>&1");
    let out = bed.dpkg(&format!("-i {}", deb("2.0.0")));
    assert_eq!(
        bed.property_enabled("molt-update.path"),
        "disabled",
        "{out}"
    );
    assert_eq!(bed.m.is_active("molt-update.path"), "inactive", "{out}");
    bed.m.run("systemctl enable --now molt-update.path 2>&1");
    let second = bed.assert_settled_on("2.0.0", Duration::from_secs(60));
    assert_ne!(first, second, "a new agent runs");
    let last = bed.history().pop().unwrap();
    assert_eq!(
        (last.to.clone(), last.result),
        (v("2.0.0"), Outcome::Success)
    );
    assert!(
        last.reason.as_deref().unwrap_or("").contains("upgrade")
            && last
                .reason
                .as_deref()
                .unwrap_or("")
                .contains("from the OS package"),
        "{last:?}\n{out}"
    );
    bed.assert_units("active", "enabled");

    // A newer .deb whose agent fails its health check: rolled back to 2.0.0 and quarantined,
    // and the package's configuration fails, naming it. Configured again, it steps aside.
    let out = bed.m.sh(&format!(
        "DEBIAN_FRONTEND=noninteractive dpkg --force-confold -i {} 2>&1",
        deb("3.0.0")
    ));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("the hand-over to molt's updater failed (exit 5"),
        "{said}"
    );
    bed.assert_settled_on("2.0.0", Duration::from_secs(30));
    let last = bed.history().pop().unwrap();
    assert_eq!(
        (last.to.clone(), last.result),
        (v("3.0.0"), Outcome::RolledBack)
    );
    let out = bed.dpkg("--configure -a");
    assert!(
        out.contains("failed its health check on this host before"),
        "{out}"
    );
    let second = bed.assert_settled_on("2.0.0", Duration::from_secs(10));
    bed.assert_units("active", "enabled");

    // An older .deb steps aside: molt keeps 2.0.0 and its agent is not restarted.
    let records = bed.history().len();
    let out = bed.dpkg(&format!("-i {}", deb("1.0.0")));
    assert!(
        out.contains("molt 2.0.0 is installed, newer than the package's 1.0.0"),
        "{out}"
    );
    assert_eq!(
        bed.assert_settled_on("2.0.0", Duration::from_secs(10)),
        second
    );
    assert_eq!(bed.history().len(), records, "nothing was installed");

    // Removed: stopped and disabled; molt's state and the config stay.
    bed.dpkg("-r molt");
    for unit in [
        "molt-agent.service",
        "molt-recover.timer",
        "molt-update.path",
    ] {
        assert_eq!(bed.m.is_active(unit), "inactive", "{unit}");
    }
    let links = bed.m.run("find /etc/systemd -name 'molt-*'");
    assert!(links.trim().is_empty(), "enablement left: {links}");
    assert!(!bed.m.path("/usr/lib/molt").exists());
    assert_eq!(bed.layout().current_version(), Some(v("2.0.0")));
    assert!(bed.m.path("/etc/molt/agent.toml").exists());

    // Installed again: the package steps aside for the kept version, and the agent is back.
    let out = bed.dpkg(&format!("-i {}", deb("2.0.0")));
    assert!(
        out.contains("molt 2.0.0 is already installed; the package has nothing to add"),
        "{out}"
    );
    // started by the package itself, not only later by the recover timer
    assert_eq!(bed.m.is_active("molt-agent"), "active", "{out}");
    bed.assert_settled_on("2.0.0", Duration::from_secs(30));
    bed.assert_units("active", "enabled");

    // Purged: nothing of molt is left but its user (kept, as the docs say).
    bed.dpkg("-P molt");
    assert_eq!(bed.m.is_active("molt-agent.service"), "inactive");
    let stray = bed.m.sh("pgrep -u molt");
    assert!(!stray.status.success(), "a process of molt still runs");
    bed.m.run("userdel molt");
    let after = file_list(&bed.m);
    let shadow_backups = |p: &&String| {
        !matches!(
            p.as_str(),
            "/etc/passwd-" | "/etc/group-" | "/etc/shadow-" | "/etc/gshadow-" | "/etc/.pwd.lock"
        )
    };
    let left: Vec<&String> = after
        .iter()
        .filter(|p| !clean.contains(p))
        .filter(shadow_backups)
        .collect();
    let gone: Vec<&String> = clean.iter().filter(|p| !after.contains(p)).collect();
    assert!(
        left.is_empty() && gone.is_empty(),
        "after the purge, left behind: {left:?}; removed: {gone:?}"
    );

    // The .rpm, as Debian's rpm reads it.
    bed.m.poweroff();
    let rpm_file = packages.join(format!("molt-1.0.0-1.{rpm_arch}.rpm"));
    let rpm = |args: &[&str]| {
        let out = std::process::Command::new("rpm")
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "rpm {args:?}: {text}");
        text
    };
    let file = rpm_file.display().to_string();
    let info = rpm(&["-qip", &file]);
    assert!(
        info.contains("Name        : molt") && info.contains("Version     : 1.0.0"),
        "{info}"
    );
    let listed = rpm(&["-qlp", &file]);
    for path in [
        "/usr/lib/molt/bootstrap.json",
        "/usr/lib/molt/updater",
        "/usr/lib/molt/root.json",
        "/usr/lib/systemd/system/molt-agent.service",
        "/usr/lib/systemd/system/molt-update.path",
        "/etc/molt/agent.toml",
    ] {
        assert!(listed.lines().any(|l| l == path), "{path} in {listed}");
    }
    let config = rpm(&["-qcp", &file]);
    assert_eq!(config.trim(), "/etc/molt/agent.toml");

    // Installed into the image (the powered-off machine) as an image builder does: no
    // systemd runs there, so the version is installed and the units enabled for the boot.
    let root = bed.m.rootfs().display().to_string();
    let debian_rpm = rpm(&["--help"]).contains("--force-debian");
    rpm(&["--root", &root, "--initdb"]);
    // (--nodeps: the scratch root's rpm database knows none of its Debian packages)
    let into_image = |mode: &str, file: &str| {
        let mut args = vec!["--root", &root, mode, "--nodeps"];
        if debian_rpm {
            args.push("--force-debian");
        }
        args.push(file);
        rpm(&args)
    };
    let said = into_image("-i", &file);
    assert_eq!(bed.layout().current_version(), Some(v("1.0.0")), "{said}");
    assert!(bed.layout().is_valid(&v("1.0.0")));
    let last = bed.history().pop().unwrap();
    assert!(
        last.reason
            .as_deref()
            .unwrap_or("")
            .contains("no service manager runs"),
        "{last:?}\n{said}"
    );
    assert!(
        std::fs::read_to_string(bed.m.path("/etc/passwd"))
            .unwrap()
            .contains("\nmolt:"),
        "the molt user"
    );
    bed.m.boot_again();
    bed.assert_settled_on("1.0.0", Duration::from_secs(60));
    bed.assert_units("active", "enabled");
    bed.m.poweroff();
    // An upgrade baked into the same image: installed for the next boot; the links stay.
    let two = packages
        .join(format!("molt-2.0.0-1.{rpm_arch}.rpm"))
        .display()
        .to_string();
    let links = |m: &Machine| {
        let out = std::process::Command::new("find")
            .arg(m.path("/etc/systemd"))
            .args(["-name", "molt-*"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = links(&bed.m);
    let said = into_image("-U", &two);
    assert_eq!(bed.layout().current_version(), Some(v("2.0.0")), "{said}");
    assert!(
        !said.contains("ERROR"),
        "nothing is started in the image: {said}"
    );
    assert!(
        before.lines().count() == 3 && links(&bed.m) == before,
        "the units stay enabled: {before} / {}",
        links(&bed.m)
    );
    let said = rpm(&["--root", &root, "-e", "molt"]);
    assert!(!bed.m.path("/usr/lib/molt").exists(), "{said}");
    assert!(
        !bed.m
            .path("/usr/lib/systemd/system/molt-agent.service")
            .exists()
    );
    assert!(links(&bed.m).is_empty(), "{}", links(&bed.m));
    assert_eq!(bed.layout().current_version(), Some(v("2.0.0")), "kept");
}
