//! `molt_fetch::aws` against a real (loopback) IMDS and real credentials files: region
//! precedence, IMDSv2 enforcement and the IMDSv1 fallback, an unreachable IMDS, the instance id,
//! and the credentials chain's precedence and sources.
//!
//! aws-config reads the process environment and offers no public way to hand it another one,
//! so each case runs in a child process: this test binary again, running only
//! [`child_process`], with a cleared environment that holds exactly the variables the case sets
//! (and `HOME` in an empty temporary directory, so no `~/.aws` of the machine leaks in). No
//! test changes its own process's environment. The child prints one `MOLT-RESULT` line of JSON;
//! the parent checks it and the IMDS server's request counter.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use molt_fetch::aws::{
    self, AwsError, CredentialsFailure, ImdsFailure, ImdsSettings, RegionSource,
};
use molt_tests::imds::{ImdsConfig, ImdsRole, ImdsServer};
use serde_json::{Value, json};

const CHILD_VAR: &str = "MOLT_AWS_CHILD";
const CONFIG_REGION_VAR: &str = "MOLT_AWS_CONFIG_REGION";
const V1_FALLBACK_VAR: &str = "MOLT_AWS_V1_FALLBACK";
const RESULT_PREFIX: &str = "MOLT-RESULT ";

const INSTANCE_ID: &str = "i-0123456789abcdef0";
const IMDS_REGION: &str = "ap-south-1";

const ENV_KEY: &str = "AKIAENVENVENVENVENV1";
const ENV_SECRET: &str = "env-secret-do-not-print";
const FILE_KEY: &str = "AKIAFILEFILEFILEFIL1";
const FILE_SECRET: &str = "file-secret-do-not-print";
const ROLE_KEY: &str = "ASIAROLEROLEROLEROL1";
const ROLE_SECRET: &str = "role-secret-do-not-print";

// =====================================================================================
// The child side

/// The code each case runs, in a child process started by [`run`]. Does nothing unless
/// [`CHILD_VAR`] names an operation.
#[tokio::test]
#[ignore = "a helper: the other tests run it in a child process with an environment of their own"]
async fn child_process() {
    let Ok(operation) = std::env::var(CHILD_VAR) else {
        return;
    };
    let imds = ImdsSettings {
        v1_fallback: std::env::var(V1_FALLBACK_VAR).is_ok_and(|v| v == "true"),
    };
    let started = Instant::now();
    let result = match operation.as_str() {
        "region" => {
            let configured = std::env::var(CONFIG_REGION_VAR)
                .ok()
                .map(|r| (r.parse().unwrap(), RegionSource::Config));
            aws::resolve_region(configured, |k| std::env::var(k).ok(), &imds)
                .await
                .map(|(region, source)| json!({ "region": region, "source": source }))
        }
        "instance_id" => aws::instance_id(&imds)
            .await
            .map(|id| json!({ "instance_id": id })),
        "credentials" => {
            let provider = aws::credentials_provider(&"us-east-1".parse().unwrap()).await;
            aws::probe_credentials_detail(&provider)
                .await
                .map(|probe| serde_json::to_value(probe).unwrap())
        }
        other => panic!("unknown operation {other}"),
    };
    let elapsed_ms = started.elapsed().as_millis();
    let outcome = match result {
        Ok(value) => json!({ "ok": value, "elapsed_ms": elapsed_ms }),
        Err(error) => json!({
            "err": {
                "kind": kind(&error),
                "message": error.to_string(),
                "hint": error.hint(),
            },
            "elapsed_ms": elapsed_ms,
        }),
    };
    // On a line of its own: libtest has already printed `test child_process ... `.
    println!("\n{RESULT_PREFIX}{outcome}");
}

/// A short name for the error's variant, for the parent to match.
fn kind(error: &AwsError) -> String {
    match error {
        AwsError::BadRegionVariable { var, .. } => format!("bad_region_variable:{var}"),
        AwsError::Imds { failure, .. } => match failure {
            ImdsFailure::Disabled => "imds.disabled".into(),
            ImdsFailure::Unreachable { .. } => "imds.unreachable".into(),
            ImdsFailure::TimedOut { .. } => "imds.timed_out".into(),
            ImdsFailure::TokenRefused { .. } => "imds.token_refused".into(),
            ImdsFailure::Status { status } => format!("imds.status:{status}"),
            ImdsFailure::Invalid { .. } => "imds.invalid".into(),
            ImdsFailure::Endpoint { .. } => "imds.endpoint".into(),
            ImdsFailure::Other { .. } => "imds.other".into(),
        },
        AwsError::Credentials { kind, .. } => match kind {
            CredentialsFailure::InvalidConfiguration => "credentials.invalid_configuration".into(),
            CredentialsFailure::Provider => "credentials.provider".into(),
            CredentialsFailure::TimedOut => "credentials.timed_out".into(),
            CredentialsFailure::Unexpected => "credentials.unexpected".into(),
        },
    }
}

// =====================================================================================
// The parent side

/// What a child reported, and everything it printed (to check that no secret is in it).
struct Outcome {
    result: Value,
    output: String,
}

impl Outcome {
    fn ok(&self) -> &Value {
        assert!(self.result["ok"].is_object(), "{}", self.output);
        &self.result["ok"]
    }

    fn err(&self) -> &Value {
        assert!(self.result["err"].is_object(), "{}", self.output);
        &self.result["err"]
    }

    fn kind(&self) -> &str {
        self.err()["kind"].as_str().unwrap()
    }

    fn hint(&self) -> &str {
        self.err()["hint"].as_str().unwrap_or("")
    }

    fn elapsed_ms(&self) -> u64 {
        self.result["elapsed_ms"].as_u64().unwrap()
    }
}

/// Runs `operation` in a child process whose whole environment is `HOME=<home>` and `env`.
fn run(operation: &str, home: &Path, env: &[(&str, &str)]) -> Outcome {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_clear()
        .env("HOME", home)
        .env(CHILD_VAR, operation)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let all = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(output.status.success(), "the child failed\n{all}");
    let line = stdout
        .lines()
        .find_map(|l| l.split_once(RESULT_PREFIX).map(|(_, json)| json))
        .unwrap_or_else(|| panic!("the child printed no result\n{all}"));
    Outcome {
        result: serde_json::from_str(line).unwrap(),
        output: all,
    }
}

fn role() -> ImdsRole {
    ImdsRole {
        name: "molt-host".into(),
        access_key_id: ROLE_KEY.into(),
        secret_access_key: ROLE_SECRET.into(),
        token: "role-session-token".into(),
    }
}

fn imds() -> ImdsServer {
    ImdsServer::start(ImdsConfig::new(IMDS_REGION, INSTANCE_ID).with_role(role())).unwrap()
}

fn endpoint(server: &ImdsServer) -> String {
    server.env().1
}

/// An address where nothing listens: a port bound, then released.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

// =====================================================================================
// Region

#[test]
fn config_beats_environment_beats_imds() {
    let home = tempfile::tempdir().unwrap();
    let server = imds();
    let ep = endpoint(&server);
    let imds_env = ("AWS_EC2_METADATA_SERVICE_ENDPOINT", ep.as_str());

    let found = run(
        "region",
        home.path(),
        &[
            imds_env,
            (CONFIG_REGION_VAR, "eu-west-1"),
            ("AWS_REGION", "us-west-2"),
        ],
    );
    assert_eq!(
        found.ok(),
        &json!({ "region": "eu-west-1", "source": "config" })
    );

    let found = run(
        "region",
        home.path(),
        &[
            imds_env,
            ("AWS_REGION", "us-west-2"),
            ("AWS_DEFAULT_REGION", "eu-central-1"),
        ],
    );
    assert_eq!(
        found.ok(),
        &json!({ "region": "us-west-2", "source": "environment" })
    );

    let found = run(
        "region",
        home.path(),
        &[imds_env, ("AWS_DEFAULT_REGION", "eu-central-1")],
    );
    assert_eq!(
        found.ok(),
        &json!({ "region": "eu-central-1", "source": "environment" })
    );
    assert_eq!(
        server.requests(),
        0,
        "IMDS was contacted though an earlier source answered"
    );

    let found = run("region", home.path(), &[imds_env]);
    assert_eq!(
        found.ok(),
        &json!({ "region": IMDS_REGION, "source": "imds" })
    );
    // IMDSv2: a token first, then the read with it.
    let log = server.request_log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(
        (log[0].method.as_str(), log[0].path.as_str()),
        ("PUT", "/latest/api/token")
    );
    assert_eq!(log[1].path, "/latest/meta-data/placement/region");
    assert!(log[1].with_token);
}

#[test]
fn an_invalid_region_variable_is_an_error_and_imds_is_not_asked() {
    let home = tempfile::tempdir().unwrap();
    let server = imds();
    let ep = endpoint(&server);
    let found = run(
        "region",
        home.path(),
        &[
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &ep),
            ("AWS_REGION", "Europe"),
        ],
    );
    assert_eq!(found.kind(), "bad_region_variable:AWS_REGION");
    assert!(
        found.err()["message"]
            .as_str()
            .unwrap()
            .contains("\"Europe\"")
    );
    assert!(found.hint().contains("/etc/molt/agent.toml"));
    assert_eq!(server.requests(), 0);
}

#[test]
fn imds_v2_is_required_unless_the_v1_fallback_is_on() {
    let home = tempfile::tempdir().unwrap();
    let server = ImdsServer::start(ImdsConfig::new(IMDS_REGION, INSTANCE_ID).v1_only()).unwrap();
    let ep = endpoint(&server);
    let imds_env = ("AWS_EC2_METADATA_SERVICE_ENDPOINT", ep.as_str());

    let refused = run("region", home.path(), &[imds_env]);
    assert_eq!(refused.kind(), "imds.token_refused", "{}", refused.output);
    assert!(refused.hint().contains("imds_v1_fallback = true"));
    let log = server.request_log();
    assert!(!log.is_empty());
    assert!(
        log.iter().all(|r| r.method == "PUT"),
        "a tokenless read was sent without the fallback: {log:?}"
    );

    let found = run(
        "region",
        home.path(),
        &[imds_env, (V1_FALLBACK_VAR, "true")],
    );
    assert_eq!(
        found.ok(),
        &json!({ "region": IMDS_REGION, "source": "imds" })
    );
    let last = server.request_log().pop().unwrap();
    assert_eq!(last.path, "/latest/meta-data/placement/region");
    assert!(!last.with_token);

    let id = run(
        "instance_id",
        home.path(),
        &[imds_env, (V1_FALLBACK_VAR, "true")],
    );
    assert_eq!(id.ok()["instance_id"], INSTANCE_ID);
}

#[test]
fn an_unreachable_imds_fails_fast_with_a_hint() {
    let home = tempfile::tempdir().unwrap();
    let closed = closed_port();
    let found = run(
        "region",
        home.path(),
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &closed)],
    );
    assert_eq!(found.kind(), "imds.unreachable", "{}", found.output);
    assert!(
        found.err()["message"]
            .as_str()
            .unwrap()
            .contains("IMDS unreachable")
    );
    assert!(
        found
            .hint()
            .contains("set `region` in /etc/molt/agent.toml")
    );
    eprintln!("closed port: failed after {} ms", found.elapsed_ms());
    assert!(found.elapsed_ms() < 3000, "{}", found.output);

    // A service that accepts connections and never answers.
    let silent = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let silent_endpoint = format!("http://{}", silent.local_addr().unwrap());
    let found = run(
        "region",
        home.path(),
        &[
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &silent_endpoint),
            (V1_FALLBACK_VAR, "true"),
        ],
    );
    assert!(
        matches!(found.kind(), "imds.unreachable" | "imds.timed_out"),
        "{}",
        found.output
    );
    assert!(
        found
            .hint()
            .contains("set `region` in /etc/molt/agent.toml")
    );
    eprintln!("silent service: failed after {} ms", found.elapsed_ms());
    assert!(found.elapsed_ms() < 3000, "{}", found.output);
    drop(silent);

    let server = imds();
    let ep = endpoint(&server);
    let found = run(
        "region",
        home.path(),
        &[
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &ep),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    assert_eq!(found.kind(), "imds.disabled");
    assert!(found.hint().contains("region"));
    assert_eq!(server.requests(), 0);
}

// =====================================================================================
// Instance id

#[test]
fn instance_id_from_imds_and_malformed_ones_refused() {
    let home = tempfile::tempdir().unwrap();
    let server = imds();
    let ep = endpoint(&server);
    let found = run(
        "instance_id",
        home.path(),
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &ep)],
    );
    assert_eq!(found.ok()["instance_id"], INSTANCE_ID);

    for (bad_id, bad_region) in [
        ("i-0123456789abcdef0/../../etc", "eu-west-1\r\nx"),
        ("<html>not an id</html>", "EU-WEST-1"),
        ("i-", ""),
    ] {
        let server = ImdsServer::start(ImdsConfig::new(bad_region, bad_id)).unwrap();
        let ep = endpoint(&server);
        let imds_env = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", ep.as_str())];
        let found = run("instance_id", home.path(), &imds_env);
        assert_eq!(found.kind(), "imds.invalid", "{bad_id:?}: {}", found.output);
        let found = run("region", home.path(), &imds_env);
        assert_eq!(
            found.kind(),
            "imds.invalid",
            "{bad_region:?}: {}",
            found.output
        );
        assert!(found.hint().contains("/etc/molt/agent.toml"));
    }
}

// =====================================================================================
// Credentials

/// A shared credentials file with a `default` profile.
fn credentials_file(dir: &Path) -> String {
    let path = dir.join("credentials");
    std::fs::write(
        &path,
        format!(
            "[default]\naws_access_key_id = {FILE_KEY}\naws_secret_access_key = {FILE_SECRET}\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

fn assert_no_secret(outcome: &Outcome) {
    for secret in [ENV_SECRET, FILE_SECRET, ROLE_SECRET, "role-session-token"] {
        assert!(!outcome.output.contains(secret), "{}", outcome.output);
    }
}

#[test]
fn environment_beats_the_credentials_file_beats_the_instance_profile() {
    let home = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let credentials = credentials_file(files.path());
    let config = files.path().join("config");
    let config = config.to_str().unwrap();
    let server = imds();
    let ep = endpoint(&server);
    let imds_env = ("AWS_EC2_METADATA_SERVICE_ENDPOINT", ep.as_str());
    let file_env = ("AWS_SHARED_CREDENTIALS_FILE", credentials.as_str());
    let config_env = ("AWS_CONFIG_FILE", config);

    let found = run(
        "credentials",
        home.path(),
        &[
            imds_env,
            file_env,
            config_env,
            ("AWS_ACCESS_KEY_ID", ENV_KEY),
            ("AWS_SECRET_ACCESS_KEY", ENV_SECRET),
        ],
    );
    assert_eq!(found.ok()["source"], "environment");
    assert_eq!(found.ok()["key_prefix"], "AKIA…");
    assert_no_secret(&found);

    let found = run(
        "credentials",
        home.path(),
        &[imds_env, file_env, config_env],
    );
    assert_eq!(found.ok()["source"], "profile");
    assert_no_secret(&found);
    assert_eq!(
        server.requests(),
        0,
        "IMDS was asked though an earlier source answered"
    );

    let found = run("credentials", home.path(), &[imds_env, config_env]);
    assert_eq!(found.ok()["source"], "instance_profile", "{}", found.output);
    assert_eq!(found.ok()["key_prefix"], "ASIA…");
    assert!(found.ok()["expires"].is_string());
    assert_no_secret(&found);
    assert!(server.requests() >= 3, "{:?}", server.request_log());
    assert!(
        server
            .request_log()
            .iter()
            .any(|r| r.path == "/latest/meta-data/iam/security-credentials/molt-host")
    );
}

#[test]
fn no_credentials_anywhere_is_none() {
    let home = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let credentials = empty.path().join("credentials");
    let config = empty.path().join("config");
    let server = imds();
    let ep = endpoint(&server);
    let found = run(
        "credentials",
        home.path(),
        &[
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &ep),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ],
    );
    assert_eq!(found.ok()["source"], "none", "{}", found.output);
    assert!(found.ok()["key_prefix"].is_null());
    assert_eq!(server.requests(), 0);

    // Off EC2, IMDS not disabled: the instance profile step finds nothing, quickly.
    let closed = closed_port();
    let found = run(
        "credentials",
        home.path(),
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &closed)],
    );
    assert_eq!(found.ok()["source"], "none", "{}", found.output);
    assert!(found.elapsed_ms() < 3000, "{}", found.output);
}

#[test]
fn a_broken_profile_is_an_error_with_a_hint_not_none() {
    let home = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let credentials = files.path().join("credentials");
    // A key id without its secret.
    std::fs::write(
        &credentials,
        format!("[default]\naws_access_key_id = {FILE_KEY}\n"),
    )
    .unwrap();
    let found = run(
        "credentials",
        home.path(),
        &[
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
        ],
    );
    assert_eq!(
        found.kind(),
        "credentials.invalid_configuration",
        "{}",
        found.output
    );
    assert!(found.hint().contains("~/.aws/credentials"));
}
