//! One config serves every version a host may run, so two things must hold:
//! - a key newer than a version is ignored by it with a warning, while a typo is still
//!   refused (the real `agent` and `updater` binaries);
//! - an update never switches to a version that refuses the host's config, nor relies on
//!   a rollback to one: `agent check-config` of both runs before the switch (the updater
//!   with test agents that stand in for an older, stricter agent).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Output;

use molt_host::state::Outcome;
use molt_schema::Version;
use molt_schema::manifest::Status;
use molt_tests::agent_host::AgentHost;
use molt_tests::fixture::{TestHost, TestRepo, workspace_bin};

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn repo() -> TestRepo {
    let repo = TestRepo::new("us-east-1");
    repo.publish("1.0.0", Status::Active);
    repo.publish("2.0.0", Status::Active);
    repo
}

fn installed(repo: &TestRepo, version: &str) -> TestHost {
    let host = TestHost::new(repo);
    let out = host.update(version, &[]);
    assert_eq!(code(&out), 0, "install {version}: {}", text(&out));
    assert_eq!(host.assert_healthy(), v(version));
    host
}

/// The host's state must be exactly as before a refused update: the same agent process,
/// `current` unmoved, one `failed` record, nothing quarantined.
fn assert_nothing_changed(host: &TestHost, on: &str, pid: u32, records: usize) {
    assert_eq!(host.assert_healthy(), v(on));
    assert_eq!(host.agent_pid(), Some(pid), "the running agent was kept");
    let history = host.history();
    assert_eq!(history.len(), records + 1, "one record for the attempt");
    assert_eq!(history.last().unwrap().result, Outcome::Failed);
    let q = molt_host::state::Quarantine::load(&host.layout().quarantine()).unwrap();
    assert!(
        q.versions().is_empty(),
        "a config problem quarantines nothing"
    );
    assert!(!host.layout().journal().exists());
}

#[test]
fn a_downgrade_to_a_version_that_refuses_the_config_is_refused_before_the_switch() {
    let repo = repo();
    let host = installed(&repo, "1.0.0");
    let out = host.update("2.0.0", &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let pid = host.agent_pid().unwrap();
    let records = host.history().len();

    // 1.0.0 stands in for an older agent that does not know a key of today's config.
    let out = host
        .update_cmd("1.0.0", &["--allow-downgrade"])
        .env("MOLT_TEST_AGENT_1_0_0", "rejects-config")
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(code(&out), 1, "{said}");
    assert!(
        said.contains("1.0.0 refuses this host's config; nothing changed")
            && said.contains("unknown field `log_format`")
            && said.contains("check-config"),
        "{said}"
    );
    assert_nothing_changed(&host, "2.0.0", pid, records);

    // once the config suits it, the same downgrade goes through
    let out = host.update("1.0.0", &["--allow-downgrade"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("1.0.0"));
}

#[test]
fn an_update_whose_rollback_would_restore_a_version_that_refuses_the_config_is_refused() {
    let repo = repo();
    let host = installed(&repo, "1.0.0");
    let pid = host.agent_pid().unwrap();
    let records = host.history().len();
    // The running 1.0.0 read the config before it was edited; restarted, it would refuse it.
    let out = host
        .update_cmd("2.0.0", &[])
        .env("MOLT_TEST_AGENT_1_0_0", "rejects-config")
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(code(&out), 1, "{said}");
    assert!(
        said.contains("1.0.0, the version a rollback would restore, refuses this host's config"),
        "{said}"
    );
    assert_nothing_changed(&host, "1.0.0", pid, records);
}

#[test]
fn an_agent_that_predates_check_config_is_switched_to_with_a_warning() {
    let repo = repo();
    let host = installed(&repo, "1.0.0");
    let out = host
        .update_cmd("2.0.0", &[])
        .env("MOLT_TEST_AGENT_2_0_0", "no-check-config")
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(code(&out), 0, "{said}");
    assert!(
        said.contains("2.0.0 predates `agent check-config`"),
        "{said}"
    );
    assert_eq!(host.assert_healthy(), v("2.0.0"));
}

/// The config the updater reads is the one the target's check reads: a typo the target
/// refuses stops the update with the target's own words.
#[test]
fn the_target_checks_the_config_the_updater_was_given() {
    let repo = repo();
    let host = installed(&repo, "1.0.0");
    let pid = host.agent_pid().unwrap();
    let records = host.history().len();
    let config = host.root.path().join("agent.toml");
    // the updater reads this file too, so a typo in it stops the updater itself first
    std::fs::write(&config, "[updater]\nsoack = \"1s\"\n").unwrap();
    let out = host.update("2.0.0", &[]);
    let said = text(&out);
    assert_eq!(code(&out), 2, "{said}");
    assert!(
        said.contains("soack") && said.contains("did you mean `soak`?"),
        "{said}"
    );
    assert_eq!(host.agent_pid(), Some(pid));
    assert_eq!(host.history().len(), records, "the updater never started");

    // a newer key: the updater and both agents ignore it with a warning, and the update runs
    std::fs::write(&config, "[agent]\nlog_sink = \"json\"\n").unwrap();
    let out = host.update("2.0.0", &[]);
    let said = text(&out);
    assert_eq!(code(&out), 0, "{said}");
    assert!(
        said.contains("unknown key `log_sink` in [agent] (line 2) is ignored"),
        "{said}"
    );
    assert_eq!(host.assert_healthy(), v("2.0.0"));
}

#[test]
fn the_real_agent_ignores_newer_keys_and_refuses_typos() {
    let agent = workspace_bin("agent");
    let host = AgentHost::new();

    host.write_config("[agent]\nhold = true\nlog_sink = \"json\"\n\n[telemetry]\nport = 1\n");
    let out = host.agent(&agent).arg("check-config").output().unwrap();
    let said = text(&out);
    assert_eq!(code(&out), 0, "{said}");
    assert!(
        said.contains("is valid; 2 key(s) this version does not know are ignored")
            && said.contains("unknown key `log_sink` in [agent] (line 4) is ignored")
            && said.contains("unknown key `telemetry` at the top level (line 6) is ignored"),
        "{said}"
    );
    // the ignored keys do not stop the agent's other commands
    let out = host
        .agent(&agent)
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));

    for (config, expected, line) in [
        ("[agent]\nhodl = true\n", "did you mean `hold`?", 3),
        ("[agent]\nHold = true\n", "did you mean `hold`?", 3),
        ("[agent]\nsoak = \"1s\"\n", "`soak` belongs in [updater]", 3),
        ("[agnet]\nhold = true\n", "did you mean `agent`?", 2),
        ("[agent]\nhold = \"yes please\"\n", "invalid type", 3),
    ] {
        host.write_config(config);
        let out = host.agent(&agent).arg("check-config").output().unwrap();
        let said = text(&out);
        assert_eq!(code(&out), 2, "{config}: {said}");
        assert!(
            said.contains(expected) && said.contains(&format!("line {line}")),
            "{config}: expected {expected:?} at line {line}: {said}"
        );
    }
}
