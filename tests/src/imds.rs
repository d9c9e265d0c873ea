//! A small EC2 instance metadata service (IMDS) on loopback, for tests.
//!
//! [`ImdsServer::start`] serves on `127.0.0.1` (an ephemeral port) from its own thread and
//! tokio runtime, like [`FileServer`](crate::http_server::FileServer); dropping the server
//! stops it. Point aws-config at it with [`ImdsServer::env`]
//! (`AWS_EC2_METADATA_SERVICE_ENDPOINT`).
//!
//! It enforces IMDSv2 as EC2 does with `HttpTokens=required`: `PUT /latest/api/token` with
//! `x-aws-ec2-metadata-token-ttl-seconds` (1 to 21600) returns a random token, and a GET
//! without a token it issued gets 401. With [`ImdsConfig::v1_only`] it behaves like a service
//! that knows only IMDSv1: the token `PUT` gets 403 and GETs answer without a token.
//!
//! It serves `placement/region`, `instance-id`, `iam/security-credentials/` (the role's name)
//! and `iam/security-credentials/<role>` (credentials that expire in an hour) under
//! `/latest/meta-data/`, and `/latest/dynamic/instance-identity/document`. Everything else is
//! 404. It counts every request it receives ([`ImdsServer::requests`]), so a test can prove
//! that IMDS was not contacted.
//!
//! ```no_run
//! use molt_tests::imds::{ImdsConfig, ImdsServer};
//! let imds = ImdsServer::start(ImdsConfig::new("eu-west-1", "i-0123456789abcdef0")).unwrap();
//! let (name, value) = imds.env(); // AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:<port>
//! ```

use std::collections::HashSet;
use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::background::Background;
use tokio::net::TcpStream;

/// The variable aws-config reads the IMDS endpoint from.
pub const ENDPOINT_VAR: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";

const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const MAX_TTL: u64 = 21_600;
const CREDENTIALS_PREFIX: &str = "/latest/meta-data/iam/security-credentials/";

/// The request log keeps at most this many entries (the counter keeps counting).
const LOG_LIMIT: usize = 10_000;

/// An instance profile's role and the credentials IMDS hands out for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImdsRole {
    pub name: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub token: String,
}

/// What the server answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImdsConfig {
    /// `placement/region`, served as is (so a test can serve a malformed one).
    pub region: String,
    /// `instance-id`, served as is.
    pub instance_id: String,
    /// The instance profile; `None` answers 404 for the credentials paths, as EC2 does for an
    /// instance without one.
    pub role: Option<ImdsRole>,
    /// Behave like an IMDSv1-only service: refuse the token `PUT` (403), answer tokenless GETs.
    pub v1_only: bool,
}

impl ImdsConfig {
    /// IMDSv2, no instance profile.
    pub fn new(region: &str, instance_id: &str) -> Self {
        Self {
            region: region.to_owned(),
            instance_id: instance_id.to_owned(),
            role: None,
            v1_only: false,
        }
    }

    /// With the instance profile `role`.
    pub fn with_role(mut self, role: ImdsRole) -> Self {
        self.role = Some(role);
        self
    }

    /// As an IMDSv1-only service.
    pub fn v1_only(mut self) -> Self {
        self.v1_only = true;
        self
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImdsRequest {
    /// `GET`, `PUT`, …
    pub method: String,
    /// The request path, no query.
    pub path: String,
    /// Whether it carried `x-aws-ec2-metadata-token`.
    pub with_token: bool,
    /// The status answered.
    pub status: u16,
}

#[derive(Debug, Default)]
struct State {
    tokens: HashSet<String>,
    total: usize,
    log: Vec<ImdsRequest>,
}

#[derive(Debug)]
struct Shared {
    config: ImdsConfig,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock leaves the state usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running IMDS; see the [module documentation](self). Stops when dropped.
#[derive(Debug)]
pub struct ImdsServer {
    server: Background,
    shared: Arc<Shared>,
}

impl ImdsServer {
    /// Serves `config` on `127.0.0.1` at an ephemeral port.
    pub fn start(config: ImdsConfig) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            config,
            state: Mutex::default(),
        });
        let serving = Arc::clone(&shared);
        let server = Background::start("imds", move |stream| {
            serve_connection(stream, Arc::clone(&serving))
        })?;
        Ok(Self { server, shared })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// The environment variable that points aws-config (and molt) at this server.
    pub fn env(&self) -> (&'static str, String) {
        (ENDPOINT_VAR, self.endpoint())
    }

    /// How many requests arrived in all, whatever their answer.
    pub fn requests(&self) -> usize {
        self.shared.state().total
    }

    /// The requests so far, oldest first (the first 10,000).
    pub fn request_log(&self) -> Vec<ImdsRequest> {
        self.shared.state().log.clone()
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(handle(&request, &shared)) }
    });
    // Errors here are clients going away.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn handle(request: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let token = request
        .headers()
        .get(TOKEN_HEADER)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let response = respond(request, token.as_deref(), shared);
    let mut state = shared.state();
    state.total += 1;
    if state.log.len() < LOG_LIMIT {
        state.log.push(ImdsRequest {
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
            with_token: token.is_some(),
            status: response.status().as_u16(),
        });
    }
    response
}

fn respond(
    request: &Request<Incoming>,
    token: Option<&str>,
    shared: &Shared,
) -> Response<Full<Bytes>> {
    let config = &shared.config;
    let path = request.uri().path();
    if path == "/latest/api/token" {
        if request.method() != Method::PUT {
            return text(StatusCode::METHOD_NOT_ALLOWED, "");
        }
        if config.v1_only {
            return text(StatusCode::FORBIDDEN, "");
        }
        return issue_token(request, shared);
    }
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "");
    }
    if !config.v1_only && !token.is_some_and(|t| shared.state().tokens.contains(t)) {
        return text(StatusCode::UNAUTHORIZED, "");
    }
    match path {
        "/latest/meta-data/placement/region" => text(StatusCode::OK, &config.region),
        "/latest/meta-data/instance-id" => text(StatusCode::OK, &config.instance_id),
        "/latest/dynamic/instance-identity/document" => {
            let document = serde_json::json!({
                "accountId": "123456789012",
                "architecture": "x86_64",
                "availabilityZone": format!("{}a", config.region),
                "imageId": "ami-0123456789abcdef0",
                "instanceId": config.instance_id,
                "instanceType": "t3.micro",
                "pendingTime": "2024-01-01T00:00:00Z",
                "privateIp": "10.0.0.10",
                "region": config.region,
                "version": "2017-09-30",
            });
            json(&document)
        }
        _ => match (path.strip_prefix(CREDENTIALS_PREFIX), &config.role) {
            (Some(""), Some(role)) => text(StatusCode::OK, &role.name),
            (Some(name), Some(role)) if name == role.name => json(&credentials(role)),
            _ => text(StatusCode::NOT_FOUND, ""),
        },
    }
}

fn issue_token(request: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let ttl = request
        .headers()
        .get(TTL_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        .filter(|ttl| (1..=MAX_TTL).contains(ttl));
    let Some(ttl) = ttl else {
        return text(StatusCode::BAD_REQUEST, "");
    };
    let mut raw = [0u8; 24];
    if molt_host::random_bytes(&mut raw).is_err() {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "");
    }
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    shared.state().tokens.insert(token.clone());
    let mut response = text(StatusCode::OK, &token);
    response
        .headers_mut()
        .insert(TTL_HEADER, HeaderValue::from(ttl));
    response
}

/// The answer to `iam/security-credentials/<role>`, as EC2 writes it.
fn credentials(role: &ImdsRole) -> serde_json::Value {
    let now = jiff::Timestamp::now().as_second();
    let at = |second| {
        jiff::Timestamp::from_second(second)
            .map(|t| t.to_string())
            .unwrap_or_default()
    };
    serde_json::json!({
        "Code": "Success",
        "LastUpdated": at(now),
        "Type": "AWS-HMAC",
        "AccessKeyId": role.access_key_id,
        "SecretAccessKey": role.secret_access_key,
        "Token": role.token,
        "Expiration": at(now + 3600),
    })
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::OK, &value.to_string());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// One raw request; the whole answer, read until the server closes.
    fn raw(server: &ImdsServer, request: &str) -> String {
        let mut stream = std::net::TcpStream::connect(server.server.addr()).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    }

    fn call(server: &ImdsServer, method: &str, path: &str, extra: &str) -> String {
        raw(
            server,
            &format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n"),
        )
    }

    fn body(answer: &str) -> &str {
        answer.split_once("\r\n\r\n").map_or("", |(_, body)| body)
    }

    fn role() -> ImdsRole {
        ImdsRole {
            name: "molt-host".into(),
            access_key_id: "ASIATESTTESTTEST".into(),
            secret_access_key: "secret".into(),
            token: "session".into(),
        }
    }

    #[test]
    fn enforces_imdsv2_tokens() {
        let server = ImdsServer::start(
            ImdsConfig::new("eu-west-1", "i-0123456789abcdef0").with_role(role()),
        )
        .unwrap();
        let region = "/latest/meta-data/placement/region";
        assert!(call(&server, "GET", region, "").starts_with("HTTP/1.1 401"));
        assert!(call(&server, "PUT", "/latest/api/token", "").starts_with("HTTP/1.1 400"));
        let answer = call(
            &server,
            "PUT",
            "/latest/api/token",
            "x-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 0\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains("x-aws-ec2-metadata-token-ttl-seconds: 60"),
            "{answer}"
        );
        let token = body(&answer).to_owned();
        assert_eq!(token.len(), 48);

        let with = format!("x-aws-ec2-metadata-token: {token}\r\n");
        let answer = call(&server, "GET", region, &with);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(body(&answer), "eu-west-1");
        let wrong = "x-aws-ec2-metadata-token: forged\r\n";
        assert!(call(&server, "GET", region, wrong).starts_with("HTTP/1.1 401"));

        let answer = call(&server, "GET", CREDENTIALS_PREFIX, &with);
        assert_eq!(body(&answer), "molt-host");
        let answer = call(
            &server,
            "GET",
            &format!("{CREDENTIALS_PREFIX}molt-host"),
            &with,
        );
        let value: serde_json::Value = serde_json::from_str(body(&answer)).unwrap();
        assert_eq!(value["Code"], "Success");
        assert_eq!(value["AccessKeyId"], "ASIATESTTESTTEST");
        let expires: jiff::Timestamp = value["Expiration"].as_str().unwrap().parse().unwrap();
        assert!(expires > jiff::Timestamp::now());
        let other = call(&server, "GET", &format!("{CREDENTIALS_PREFIX}other"), &with);
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");

        assert_eq!(server.requests(), 8);
        assert_eq!(server.request_log()[0].status, 401);
    }

    #[test]
    fn v1_only_refuses_tokens_and_answers_without_one() {
        let server =
            ImdsServer::start(ImdsConfig::new("eu-west-1", "i-0123456789abcdef0").v1_only())
                .unwrap();
        let answer = call(
            &server,
            "PUT",
            "/latest/api/token",
            "x-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 0\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        let answer = call(&server, "GET", "/latest/meta-data/instance-id", "");
        assert_eq!(body(&answer), "i-0123456789abcdef0");
        // No instance profile: 404, as EC2 answers.
        let answer = call(&server, "GET", CREDENTIALS_PREFIX, "");
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        assert_eq!(server.env(), (ENDPOINT_VAR, server.endpoint()));
    }
}
