//! A real S3-compatible server on loopback for end-to-end tests: the `molt-s3` binary
//! (s3s + s3s-fs; see `src/bin/molt-s3.rs`) over a fresh temporary directory.
//!
//! A bucket is a directory under the root, so [`S3Server::create_bucket`] makes one and
//! [`S3Server::object_path`] names the file behind an object. Requests signed with
//! [`S3Server::access_key`]/[`S3Server::secret_key`] may do anything; anonymous reads work on
//! public buckets, and buckets named `private-…` refuse them. Dropping the server kills it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;

use crate::fixture::workspace_bin;

/// The region molt's tests sign for (the server accepts any).
pub const REGION: &str = "us-east-1";

const ACCESS_KEY: &str = "AKIAMOLTTESTSERVER01";
const SECRET_KEY: &str = "molt/test+secret/key/not-a-real-one/0123";

/// How long the server may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[allow(clippy::panic)]
fn fail(msg: &str) -> ! {
    panic!("{msg}")
}

/// A running `molt-s3` over its own temporary root.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    /// The server exits when this pipe closes, so it dies with the test process even when
    /// that is killed before `Drop` runs.
    _lifeline: Option<ChildStdin>,
    endpoint: String,
    dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts the server and waits for its `listening on …` line.
    pub fn start() -> S3Server {
        let dir = tempfile::tempdir().unwrap_or_else(|e| fail(&format!("tempdir: {e}")));
        let root = dir.path().join("root");
        let log_path = dir.path().join("molt-s3.log");
        std::fs::create_dir(&root).unwrap_or_else(|e| fail(&format!("create {root:?}: {e}")));
        // The server's stderr goes to a file: an inherited pipe would keep cargo's output
        // open after the test.
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| fail(&format!("create {log_path:?}: {e}")));
        let mut child = Command::new(workspace_bin("molt-s3"))
            .arg("--root")
            .arg(&root)
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .args(["--addr", "127.0.0.1:0", "--exit-with-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| fail(&format!("cannot start molt-s3: {e}")));
        let Some(stdout) = child.stdout.take() else {
            fail("molt-s3 has no stdout pipe")
        };

        // Read the first line on a thread, so a server that hangs cannot hang the test.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(read);
        });
        let line = rx.recv_timeout(START_TIMEOUT);
        let endpoint = match &line {
            Ok(Ok(line)) => line
                .trim_end()
                .strip_prefix("listening on ")
                .filter(|url| url.starts_with("http://127.0.0.1:"))
                .map(str::to_owned),
            _ => None,
        };
        let Some(endpoint) = endpoint else {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            fail(&format!(
                "molt-s3 did not announce its address (got {line:?}); its stderr:\n{log}"
            ));
        };
        S3Server {
            _lifeline: child.stdin.take(),
            child,
            endpoint,
            dir,
        }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash (path-style: `{endpoint}/{bucket}/{key}`).
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    pub fn access_key(&self) -> &str {
        ACCESS_KEY
    }

    pub fn secret_key(&self) -> &str {
        SECRET_KEY
    }

    /// The directory that holds the buckets.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Creates a bucket (a directory under the root); names starting `private-` refuse
    /// anonymous access. Returns the bucket's directory.
    pub fn create_bucket(&self, name: &str) -> PathBuf {
        let path = self.root().join(name);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| fail(&format!("create bucket {name}: {e}")));
        path
    }

    /// The file behind `key` in `bucket`.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root().join(bucket).join(Path::new(key))
    }

    /// Makes the server forget the checksums it keeps for an object (s3s-fs's record of
    /// it), as a server that stores none (moto) has it: its answers then carry none.
    pub fn forget_checksums(&self, bucket: &str, key: &str) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let record = self.root().join(format!(
            ".bucket-{}.object-{}.internal.json",
            b64.encode(bucket.as_bytes()),
            b64.encode(key.as_bytes())
        ));
        if let Err(e) = std::fs::remove_file(&record) {
            fail(&format!("remove {record:?}: {e}"));
        }
    }

    /// Path-style URL of an object, for plain HTTP clients (`key` is used as given, so
    /// encode it first if it needs encoding).
    pub fn object_url(&self, bucket: &str, key: &str) -> String {
        format!("{}/{bucket}/{key}", self.endpoint)
    }

    /// The server's credentials, as a provider for `molt_fetch::s3::S3Signer`.
    pub fn credentials_provider(&self) -> SharedCredentialsProvider {
        SharedCredentialsProvider::new(Credentials::new(
            ACCESS_KEY,
            SECRET_KEY,
            None,
            None,
            "molt-s3 test server",
        ))
    }

    /// The environment a child process needs to reach this server through the AWS default
    /// chain: credentials, the endpoint (`AWS_ENDPOINT_URL_S3`) and a region.
    pub fn env_for_credentials(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_ENDPOINT_URL_S3", self.endpoint.clone()),
            ("AWS_REGION", REGION.to_owned()),
        ]
    }

    /// What the server wrote to stderr (only startup errors, unless `MOLT_S3_LOG` was set
    /// for the test).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("molt-s3.log")).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
