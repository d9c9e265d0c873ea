//! The host's AWS context through aws-config: its region, its instance id and its credentials.
//!
//! - [`resolve_region`]: the region from the configuration (or the command line), then
//!   `AWS_REGION`, then `AWS_DEFAULT_REGION`, then IMDS `placement/region` (SPEC §3). IMDS is
//!   contacted only when nothing earlier answers.
//! - [`instance_id`]: the EC2 instance id from IMDS, checked, since it is network input.
//! - [`credentials_provider`]: aws-config's default credentials chain (environment → shared
//!   credentials/config files → web identity → ECS/HTTP container endpoint → EC2 instance
//!   profile), and [`probe_credentials`] to resolve it once and tell where the credentials
//!   came from.
//!
//! IMDS is reached through aws-config's IMDSv2 client ([`aws_config::imds::Client`]), so its
//! endpoint follows aws-config's own rules (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, then
//! `ec2_metadata_service_endpoint` in the AWS config file, then the endpoint mode), and
//! `AWS_EC2_METADATA_DISABLED=true` turns it off. Every IMDS read has a total budget of
//! [`IMDS_BUDGET`], so a host that is not on EC2 learns so in about a second instead of
//! hanging. IMDSv1 (a GET without a session token) is used only when the operator sets
//! `imds_v1_fallback = true` ([`ImdsSettings::v1_fallback`]) and the metadata service has
//! refused to issue a token.
//!
//! Secrets never reach a message or a log line: credentials are never `Debug`-printed, and the
//! access key id is shown only as a short prefix ([`CredentialsProbe::key_prefix`]).

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::imds;
use aws_config::imds::client::error::{ImdsError, TokenError};
use aws_credential_types::Credentials;
use aws_credential_types::credential_feature::AwsCredentialFeature;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use serde::{Deserialize, Serialize};

use molt_schema::region::Region;

/// The longest any one IMDS read may take in all: session token, value, retries and the IMDSv1
/// fallback together.
pub const IMDS_BUDGET: Duration = Duration::from_millis(2500);

/// Time allowed to open a connection to IMDS. IMDS is link-local: on EC2 it connects in
/// microseconds; elsewhere the address leads nowhere.
pub const IMDS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Time allowed for IMDS to answer once connected.
pub const IMDS_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// Attempts per IMDS request (aws-config retries 5xx and 401, not timeouts).
const IMDS_ATTEMPTS: u32 = 2;

/// The largest IMDSv1 answer read; the values molt asks for are a few dozen bytes.
const IMDS_V1_MAX_BODY: usize = 64 * 1024;

/// The longest a credentials probe may take (STS for web identity, the container endpoint,
/// IMDS).
pub const CREDENTIALS_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Values echoed in messages are cut to this many characters.
const SHOWN_VALUE_LIMIT: usize = 64;

/// Error details (cause chains) are cut to this many characters.
const DETAIL_LIMIT: usize = 1000;

const REGION_VARS: [&str; 2] = ["AWS_REGION", "AWS_DEFAULT_REGION"];
const IMDS_DISABLED_VAR: &str = "AWS_EC2_METADATA_DISABLED";
const IMDS_ENDPOINT_VAR: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
const IMDS_ENDPOINT_MODE_VAR: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE";
const IMDS_ENDPOINT_KEY: &str = "ec2_metadata_service_endpoint";
const IMDS_ENDPOINT_MODE_KEY: &str = "ec2_metadata_service_endpoint_mode";
const IMDS_IPV4: &str = "http://169.254.169.254";
const IMDS_IPV6: &str = "http://[fd00:ec2::254]";
const REGION_PATH: &str = "/latest/meta-data/placement/region";
const INSTANCE_ID_PATH: &str = "/latest/meta-data/instance-id";

// =====================================================================================
// Settings and sources

/// How molt talks to IMDS (from `imds_v1_fallback` in `/etc/molt/agent.toml`). The timeouts
/// are fixed ([`IMDS_BUDGET`], [`IMDS_CONNECT_TIMEOUT`], [`IMDS_READ_TIMEOUT`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImdsSettings {
    /// Use IMDSv1 (a tokenless GET) when the metadata service refuses an IMDSv2 token.
    /// Off by default: IMDSv1 is what SSRF attacks reach.
    pub v1_fallback: bool,
}

/// Where the region came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionSource {
    CommandLine,
    Config,
    /// `AWS_REGION` or `AWS_DEFAULT_REGION`.
    Environment,
    Imds,
}

impl fmt::Display for RegionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegionSource::CommandLine => "command line",
            RegionSource::Config => "config",
            RegionSource::Environment => "environment",
            RegionSource::Imds => "IMDS",
        })
    }
}

/// Where credentials came from, as the default chain found them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialsSource {
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    Environment,
    /// The shared credentials or config file (`~/.aws/credentials`, `~/.aws/config`), including
    /// roles assumed from a profile.
    Profile,
    /// A web identity token (`AWS_WEB_IDENTITY_TOKEN_FILE`, or `web_identity_token_file` in a
    /// profile), exchanged with STS.
    WebIdentity,
    /// IAM Identity Center (SSO), from a profile. Needs aws-config's `sso` feature.
    Sso,
    /// `credential_process` in a profile. Needs aws-config's `credentials-process` feature.
    Process,
    /// The ECS task role or another container credentials endpoint
    /// (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`/`_FULL_URI`).
    Container,
    /// The EC2 instance profile, through IMDS.
    InstanceProfile,
    /// Credentials were found, but aws-config did not say by which provider.
    Other,
    /// No provider in the chain had credentials.
    None,
}

impl fmt::Display for CredentialsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CredentialsSource::Environment => "environment variables",
            CredentialsSource::Profile => "shared credentials/config file",
            CredentialsSource::WebIdentity => "web identity token",
            CredentialsSource::Sso => "IAM Identity Center (SSO)",
            CredentialsSource::Process => "credential_process",
            CredentialsSource::Container => "container credentials endpoint (ECS)",
            CredentialsSource::InstanceProfile => "EC2 instance profile (IMDS)",
            CredentialsSource::Other => "another provider in the default chain",
            CredentialsSource::None => "none",
        })
    }
}

// =====================================================================================
// Errors

/// What molt asked IMDS for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImdsQuery {
    Region,
    InstanceId,
}

impl fmt::Display for ImdsQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImdsQuery::Region => "region",
            ImdsQuery::InstanceId => "instance id",
        })
    }
}

/// Why an IMDS read failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImdsFailure {
    /// `AWS_EC2_METADATA_DISABLED=true`.
    Disabled,
    /// No connection, or no answer to the session-token request (not on EC2, the metadata
    /// endpoint turned off, or a hop limit too low for a container).
    Unreachable { detail: String },
    /// The whole read took longer than [`IMDS_BUDGET`].
    TimedOut { after: Duration },
    /// The metadata service answered, but refused an IMDSv2 session token (an IMDSv1-only
    /// service), and the IMDSv1 fallback is off.
    TokenRefused { detail: String },
    /// The metadata service answered the read with this HTTP status.
    Status { status: u16 },
    /// The metadata service answered with a value that is not what was asked for.
    Invalid { value: String, reason: &'static str },
    /// The IMDS endpoint setting is not usable.
    Endpoint { detail: String },
    /// Anything else aws-config or the IMDSv1 request reported.
    Other { detail: String },
}

impl fmt::Display for ImdsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImdsFailure::Disabled => write!(f, "IMDS is disabled ({IMDS_DISABLED_VAR}=true)"),
            ImdsFailure::Unreachable { detail } => write!(f, "IMDS unreachable: {detail}"),
            ImdsFailure::TimedOut { after } => {
                write!(
                    f,
                    "IMDS did not answer within {}",
                    humantime::format_duration(*after)
                )
            }
            ImdsFailure::TokenRefused { detail } => write!(
                f,
                "IMDS refused an IMDSv2 session token ({detail}), and the IMDSv1 fallback is off"
            ),
            ImdsFailure::Status { status } => write!(f, "IMDS answered HTTP {status}"),
            ImdsFailure::Invalid { value, reason } => {
                write!(f, "IMDS answered {value:?}, which is not valid: {reason}")
            }
            ImdsFailure::Endpoint { detail } => write!(f, "bad IMDS endpoint setting: {detail}"),
            ImdsFailure::Other { detail } => write!(f, "IMDS request failed: {detail}"),
        }
    }
}

/// What kind of failure the credentials chain reported (not "no credentials": that is
/// [`CredentialsSource::None`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialsFailure {
    /// A provider is configured, but wrongly (a malformed profile, a key id without a secret,
    /// a profile that needs a feature molt is built without).
    InvalidConfiguration,
    /// A provider failed while loading (STS, the container endpoint or IMDS answered an error).
    Provider,
    /// A provider did not answer in time.
    TimedOut,
    /// A provider returned something unexpected.
    Unexpected,
}

/// A failure to learn the region, the instance id or the credentials.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AwsError {
    /// `AWS_REGION` or `AWS_DEFAULT_REGION` is set to something that is not a region.
    #[error("{var}={value:?} is not a valid region: {reason}")]
    BadRegionVariable {
        var: &'static str,
        value: String,
        reason: &'static str,
    },
    /// IMDS could not tell the region or the instance id.
    #[error("cannot read the {query} from IMDS: {failure}")]
    Imds {
        query: ImdsQuery,
        failure: ImdsFailure,
    },
    /// The credentials chain failed (as opposed to finding nothing).
    #[error("cannot load AWS credentials: {detail}")]
    Credentials {
        kind: CredentialsFailure,
        detail: String,
    },
}

impl AwsError {
    /// What the operator can do about it.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            AwsError::BadRegionVariable { .. } => {
                "fix or unset the variable in the service's environment, or set `region` in /etc/molt/agent.toml"
            }
            AwsError::Imds { query, failure } => imds_hint(*query, failure)?,
            AwsError::Credentials { kind, .. } => match kind {
                CredentialsFailure::InvalidConfiguration => {
                    "fix the profile named in the message in ~/.aws/config or ~/.aws/credentials of the service's user (or the files AWS_CONFIG_FILE/AWS_SHARED_CREDENTIALS_FILE name), or fix the AWS_* variables"
                }
                CredentialsFailure::Provider | CredentialsFailure::TimedOut => {
                    "check that this host can reach the credentials provider named in the message (STS, the container credentials endpoint, or IMDS), then retry"
                }
                CredentialsFailure::Unexpected => {
                    "run with MOLT_LOG=aws_config=debug to see what the provider answered"
                }
            },
        })
    }
}

fn imds_hint(query: ImdsQuery, failure: &ImdsFailure) -> Option<&'static str> {
    use ImdsFailure as F;
    use ImdsQuery as Q;
    Some(match (query, failure) {
        (Q::Region, F::Disabled) => {
            "set `region` in /etc/molt/agent.toml (or AWS_REGION), or unset AWS_EC2_METADATA_DISABLED"
        }
        (Q::Region, F::Unreachable { .. } | F::TimedOut { .. }) => {
            "set `region` in /etc/molt/agent.toml (or AWS_REGION) when not on EC2; on EC2, check that the instance metadata endpoint is enabled and its hop limit reaches this process (2 inside a container)"
        }
        (Q::InstanceId, F::Unreachable { .. } | F::TimedOut { .. }) => {
            "on EC2, check that the instance metadata endpoint is enabled and its hop limit reaches this process (2 inside a container)"
        }
        (_, F::TokenRefused { .. }) => {
            "turn on IMDSv2 for the instance (`aws ec2 modify-instance-metadata-options --http-tokens required`), or set `imds_v1_fallback = true` in /etc/molt/agent.toml"
        }
        (Q::Region, F::Status { .. } | F::Invalid { .. } | F::Other { .. }) => {
            "set `region` in /etc/molt/agent.toml"
        }
        (_, F::Endpoint { .. }) => {
            "fix AWS_EC2_METADATA_SERVICE_ENDPOINT (or ec2_metadata_service_endpoint/_mode in the AWS config file): a URL such as http://169.254.169.254, or mode IPv4/IPv6"
        }
        (Q::InstanceId, F::Disabled | F::Status { .. } | F::Invalid { .. } | F::Other { .. }) => {
            return None;
        }
    })
}

// =====================================================================================
// Region

/// The host's region and where it came from.
///
/// In order: `configured` (the config file or the command line, already parsed), then
/// `AWS_REGION`, then `AWS_DEFAULT_REGION`, then IMDS `placement/region`. `lookup` reads the
/// two region variables (pass `|k| std::env::var(k).ok()`); an empty value counts as unset,
/// and an invalid one is an error that names the variable (it is not skipped). IMDS is read
/// only when nothing earlier answers; its endpoint and `AWS_EC2_METADATA_DISABLED` come from the
/// process environment, as aws-config reads them.
pub async fn resolve_region(
    configured: Option<(Region, RegionSource)>,
    lookup: impl Fn(&str) -> Option<String>,
    imds: &ImdsSettings,
) -> Result<(Region, RegionSource), AwsError> {
    if let Some(found) = configured {
        return Ok(found);
    }
    if let Some(region) = region_from_env(&lookup)? {
        return Ok((region, RegionSource::Environment));
    }
    // Not needed past this point, so it need not be `Send` across the IMDS read.
    drop(lookup);
    let text = imds_get(REGION_PATH, ImdsQuery::Region, imds).await?;
    let region = text
        .trim_ascii()
        .parse::<Region>()
        .map_err(|e| AwsError::Imds {
            query: ImdsQuery::Region,
            failure: ImdsFailure::Invalid {
                value: shown(&text),
                reason: e.reason,
            },
        })?;
    tracing::debug!(%region, "region from IMDS");
    Ok((region, RegionSource::Imds))
}

/// `AWS_REGION`, then `AWS_DEFAULT_REGION`; `None` when both are unset or empty.
fn region_from_env(lookup: &impl Fn(&str) -> Option<String>) -> Result<Option<Region>, AwsError> {
    for var in REGION_VARS {
        let Some(value) = lookup(var).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        return value
            .trim()
            .parse::<Region>()
            .map(Some)
            .map_err(|e| AwsError::BadRegionVariable {
                var,
                value: shown(&value),
                reason: e.reason,
            });
    }
    Ok(None)
}

// =====================================================================================
// Instance id

/// This instance's id from IMDS (`i-` and 8 to 32 lower-case hex digits; anything else is
/// refused, since it is network input and becomes part of the rollout seed and report keys).
pub async fn instance_id(imds: &ImdsSettings) -> Result<String, AwsError> {
    let text = imds_get(INSTANCE_ID_PATH, ImdsQuery::InstanceId, imds).await?;
    let id = text.trim_ascii();
    check_instance_id(id).map_err(|reason| AwsError::Imds {
        query: ImdsQuery::InstanceId,
        failure: ImdsFailure::Invalid {
            value: shown(&text),
            reason,
        },
    })?;
    Ok(id.to_owned())
}

fn check_instance_id(id: &str) -> Result<(), &'static str> {
    let hex = id
        .strip_prefix("i-")
        .ok_or("an instance id starts with \"i-\"")?;
    if !(8..=32).contains(&hex.len()) {
        return Err("an instance id has 8 to 32 hex digits after \"i-\"");
    }
    if !hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("an instance id has only lower-case hex digits after \"i-\"");
    }
    Ok(())
}

// =====================================================================================
// IMDS

/// aws-config's IMDSv2 client with molt's short timeouts. The endpoint is left to aws-config.
fn imds_client() -> imds::Client {
    imds::Client::builder()
        .connect_timeout(IMDS_CONNECT_TIMEOUT)
        .read_timeout(IMDS_READ_TIMEOUT)
        .operation_attempt_timeout(IMDS_CONNECT_TIMEOUT + IMDS_READ_TIMEOUT)
        .operation_timeout(IMDS_BUDGET)
        .max_attempts(IMDS_ATTEMPTS)
        .build()
}

fn imds_disabled() -> bool {
    std::env::var(IMDS_DISABLED_VAR).is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Reads `path` from IMDS within [`IMDS_BUDGET`]: IMDSv2 through aws-config, then IMDSv1 when
/// allowed and the service refused a token.
async fn imds_get(
    path: &'static str,
    query: ImdsQuery,
    settings: &ImdsSettings,
) -> Result<String, AwsError> {
    let fail = |failure| AwsError::Imds { query, failure };
    if imds_disabled() {
        return Err(fail(ImdsFailure::Disabled));
    }
    let deadline = tokio::time::Instant::now() + IMDS_BUDGET;
    let timed_out = || fail(ImdsFailure::TimedOut { after: IMDS_BUDGET });
    let v2 = tokio::time::timeout_at(deadline, imds_client().get(path))
        .await
        .map_err(|_| timed_out())?;
    let failure = match v2 {
        Ok(value) => return Ok(String::from(value)),
        Err(e) => classify_imds_error(&e),
    };
    match failure {
        ImdsFailure::TokenRefused { detail } if settings.v1_fallback => {
            tracing::warn!(
                path,
                "IMDS refused an IMDSv2 token ({detail}); using IMDSv1 as `imds_v1_fallback = true` allows"
            );
            tokio::time::timeout_at(deadline, imds_v1_get(path))
                .await
                .map_err(|_| timed_out())?
                .map_err(fail)
        }
        failure => Err(fail(failure)),
    }
}

fn classify_imds_error(error: &ImdsError) -> ImdsFailure {
    let detail = error_chain(error);
    match error {
        ImdsError::FailedToLoadToken(token) if token.is_dispatch_failure() => {
            ImdsFailure::Unreachable { detail }
        }
        // The service answered the token request, and the answer was a refusal.
        ImdsError::FailedToLoadToken(_) if chain_has::<TokenError>(error) => {
            ImdsFailure::TokenRefused { detail }
        }
        // A timeout or a broken answer to the token request.
        ImdsError::FailedToLoadToken(_) | ImdsError::IoError(_) => {
            ImdsFailure::Unreachable { detail }
        }
        ImdsError::ErrorResponse(response) => ImdsFailure::Status {
            status: response.response().status().as_u16(),
        },
        _ if detail.contains("failed to build IMDS client") => ImdsFailure::Endpoint { detail },
        _ => ImdsFailure::Other { detail },
    }
}

/// The IMDSv1 read: a GET without a session token, to the endpoint aws-config would use.
async fn imds_v1_get(path: &str) -> Result<String, ImdsFailure> {
    let base = imds_endpoint().await?;
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let other = |e: reqwest::Error| ImdsFailure::Other {
        detail: error_chain(&e),
    };
    // IMDS is link-local: never through a proxy, never redirected.
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(IMDS_CONNECT_TIMEOUT)
        .read_timeout(IMDS_READ_TIMEOUT)
        .build()
        .map_err(other)?;
    let mut response = client.get(&url).send().await.map_err(|e| {
        if e.is_connect() || e.is_timeout() {
            ImdsFailure::Unreachable {
                detail: error_chain(&e),
            }
        } else {
            other(e)
        }
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(ImdsFailure::Status {
            status: status.as_u16(),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(other)? {
        if body.len() + chunk.len() > IMDS_V1_MAX_BODY {
            return Err(ImdsFailure::Other {
                detail: format!("the answer to {url} is larger than {IMDS_V1_MAX_BODY} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| ImdsFailure::Other {
        detail: format!("the answer to {url} is not UTF-8"),
    })
}

/// The IMDS endpoint, in aws-config's order: `AWS_EC2_METADATA_SERVICE_ENDPOINT`, the profile's
/// `ec2_metadata_service_endpoint`, then the endpoint mode (variable, then profile), IPv4 by
/// default. The AWS config file is read with aws-config's own loader.
async fn imds_endpoint() -> Result<String, ImdsFailure> {
    if let Ok(endpoint) = std::env::var(IMDS_ENDPOINT_VAR) {
        return Ok(endpoint);
    }
    // A config file that does not parse has no endpoint for us; aws-config reports it elsewhere.
    let profile = aws_config::profile::load(
        &Default::default(),
        &Default::default(),
        &Default::default(),
        None,
    )
    .await
    .ok();
    let key = |name| {
        profile
            .as_ref()
            .and_then(|p| p.get(name))
            .map(str::to_owned)
    };
    if let Some(endpoint) = key(IMDS_ENDPOINT_KEY) {
        return Ok(endpoint);
    }
    match std::env::var(IMDS_ENDPOINT_MODE_VAR)
        .ok()
        .or_else(|| key(IMDS_ENDPOINT_MODE_KEY))
    {
        None => Ok(IMDS_IPV4.to_owned()),
        Some(mode) if mode.eq_ignore_ascii_case("ipv4") => Ok(IMDS_IPV4.to_owned()),
        Some(mode) if mode.eq_ignore_ascii_case("ipv6") => Ok(IMDS_IPV6.to_owned()),
        Some(mode) => Err(ImdsFailure::Endpoint {
            detail: format!("endpoint mode {:?} is neither IPv4 nor IPv6", shown(&mode)),
        }),
    }
}

// =====================================================================================
// Credentials

/// aws-config's default credentials chain for `region` (the region STS is called in for web
/// identity): environment → shared credentials/config files → web identity → ECS/HTTP
/// container endpoint → EC2 instance profile (IMDSv2, with molt's IMDS timeouts). It reads
/// the process environment, as aws-config does. It does not cache: wrap it in a cache (or call
/// it rarely) if it is asked often.
pub async fn credentials_provider(region: &Region) -> SharedCredentialsProvider {
    let chain = DefaultCredentialsChain::builder()
        .region(aws_config::Region::new(region.as_str().to_owned()))
        .imds_client(imds_client())
        .build()
        .await;
    SharedCredentialsProvider::new(chain)
}

/// What a credentials probe found. Holds no secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CredentialsProbe {
    pub source: CredentialsSource,
    /// The first characters of the access key id (`AKIA…` long-term, `ASIA…` temporary), or
    /// `None` when nothing was found.
    pub key_prefix: Option<String>,
    /// When temporary credentials expire.
    pub expires: Option<jiff::Timestamp>,
}

/// Resolves credentials once and tells where they came from. Finding none anywhere is
/// `Ok(CredentialsSource::None)`; a provider that is configured but fails is an error.
pub async fn probe_credentials(
    provider: &SharedCredentialsProvider,
) -> Result<CredentialsSource, AwsError> {
    probe_credentials_detail(provider).await.map(|p| p.source)
}

/// [`probe_credentials`], with the key prefix and the expiry.
pub async fn probe_credentials_detail(
    provider: &SharedCredentialsProvider,
) -> Result<CredentialsProbe, AwsError> {
    let resolved =
        tokio::time::timeout(CREDENTIALS_PROBE_TIMEOUT, provider.provide_credentials()).await;
    let credentials = match resolved {
        Err(_) => {
            return Err(AwsError::Credentials {
                kind: CredentialsFailure::TimedOut,
                detail: format!(
                    "the default chain did not finish within {}",
                    humantime::format_duration(CREDENTIALS_PROBE_TIMEOUT)
                ),
            });
        }
        Ok(Err(CredentialsError::CredentialsNotLoaded(_))) => {
            return Ok(CredentialsProbe {
                source: CredentialsSource::None,
                key_prefix: None,
                expires: None,
            });
        }
        Ok(Err(e)) => return Err(credentials_error(&e)),
        Ok(Ok(credentials)) => credentials,
    };
    let probe = describe(&credentials);
    tracing::debug!(
        source = %probe.source,
        key = probe.key_prefix.as_deref().unwrap_or(""),
        "credentials found"
    );
    Ok(probe)
}

fn credentials_error(error: &CredentialsError) -> AwsError {
    let kind = match error {
        CredentialsError::InvalidConfiguration(_) => CredentialsFailure::InvalidConfiguration,
        CredentialsError::ProviderError(_) => CredentialsFailure::Provider,
        CredentialsError::ProviderTimedOut(_) => CredentialsFailure::TimedOut,
        _ => CredentialsFailure::Unexpected,
    };
    AwsError::Credentials {
        kind,
        detail: error_chain(error),
    }
}

fn describe(credentials: &Credentials) -> CredentialsProbe {
    let features = credentials
        .get_property::<Vec<AwsCredentialFeature>>()
        .map(Vec::as_slice)
        .unwrap_or_default();
    CredentialsProbe {
        source: source_of(features),
        key_prefix: Some(key_prefix(credentials.access_key_id())),
        expires: credentials
            .expiry()
            .and_then(|t| jiff::Timestamp::try_from(t).ok()),
    }
}

/// Where credentials came from, from the features aws-config's providers record. Each
/// provider appends its feature after the providers it wraps, so the last one names the link
/// of the default chain that answered, and a profile's inner features say how the profile got
/// them.
fn source_of(features: &[AwsCredentialFeature]) -> CredentialsSource {
    use AwsCredentialFeature as F;
    let has = |wanted: &[F]| features.iter().any(|f| wanted.contains(f));
    let web_identity = [
        F::CredentialsEnvVarsStsWebIdToken,
        F::CredentialsProfileStsWebIdToken,
        F::CredentialsStsAssumeRoleWebId,
    ];
    match features.last() {
        None => CredentialsSource::Other,
        Some(F::CredentialsEnvVars) => CredentialsSource::Environment,
        Some(F::CredentialsHttp) => CredentialsSource::Container,
        Some(F::CredentialsImds) => CredentialsSource::InstanceProfile,
        Some(F::CredentialsSso | F::CredentialsProfileSso) => CredentialsSource::Sso,
        Some(F::CredentialsProcess | F::CredentialsProfileProcess) => CredentialsSource::Process,
        Some(f) if web_identity.contains(f) => CredentialsSource::WebIdentity,
        Some(
            F::CredentialsProfile
            | F::CredentialsProfileSourceProfile
            | F::CredentialsProfileNamedProvider
            | F::CredentialsProfileLogin,
        ) => {
            if has(&[F::CredentialsSso, F::CredentialsProfileSso]) {
                CredentialsSource::Sso
            } else if has(&[F::CredentialsProcess, F::CredentialsProfileProcess]) {
                CredentialsSource::Process
            } else if has(&web_identity) {
                CredentialsSource::WebIdentity
            } else {
                CredentialsSource::Profile
            }
        }
        Some(_) => CredentialsSource::Other,
    }
}

/// The first four characters of an access key id, then `…`: enough to tell `AKIA` (long-term)
/// from `ASIA` (temporary), not enough to identify the key.
fn key_prefix(access_key_id: &str) -> String {
    let prefix: String = access_key_id
        .chars()
        .take(4)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '?' })
        .collect();
    format!("{prefix}…")
}

// =====================================================================================
// The host seed

/// The machine id file, the seed's second source.
pub const MACHINE_ID: &str = "/etc/machine-id";

/// The persisted rollout seed, or a new one (SPEC §4): from the instance id, else the
/// machine id, else random. IMDS is asked when no valid seed is persisted, when the seed's
/// origin is not yet recorded, and when the persisted one was derived on an instance (so that a clone of a baked image, with another
/// instance id, derives its own: `molt_host::seed`). The agent and the updater both call
/// this, so they always agree on a host's wave.
pub async fn host_seed(
    path: &std::path::Path,
    imds: &ImdsSettings,
) -> Result<(molt_schema::rollout::Seed, molt_host::seed::SeedSource), molt_host::state::StateError>
{
    // (No origin yet: a seed from before origins were kept, adopted once with both ids.)
    let ask = molt_host::seed::persisted(path).is_none()
        || molt_host::seed::origin(path).is_none_or(|o| o.instance_id.is_some());
    let instance = match ask {
        false => None,
        true => match instance_id(imds).await {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::debug!("no instance id from IMDS: {e}");
                None
            }
        },
    };
    molt_host::seed::load_or_create(path, instance.as_deref(), std::path::Path::new(MACHINE_ID))
}

// =====================================================================================
// Helpers

/// An error and its causes on one line, each cause once, cut to a length a message can carry.
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    cut(&molt_schema::cli::one_line(error), DETAIL_LIMIT)
}

fn chain_has<E: StdError + 'static>(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<E>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// A value from the network or the environment, cut for a message.
fn shown(value: &str) -> String {
    cut(value, SHOWN_VALUE_LIMIT)
}

fn cut(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn region(s: &str) -> Region {
        s.parse().unwrap()
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| vars.get(k).cloned()
    }

    // These never reach IMDS: an earlier source answers or fails first.

    #[tokio::test]
    async fn configured_region_wins_over_the_environment() {
        let configured = Some((region("eu-west-1"), RegionSource::CommandLine));
        let found = resolve_region(
            configured,
            env(&[("AWS_REGION", "us-east-1")]),
            &ImdsSettings::default(),
        )
        .await
        .unwrap();
        assert_eq!(found, (region("eu-west-1"), RegionSource::CommandLine));
    }

    #[tokio::test]
    async fn aws_region_wins_over_aws_default_region() {
        let both = env(&[
            ("AWS_REGION", "us-west-2"),
            ("AWS_DEFAULT_REGION", "eu-central-1"),
        ]);
        let found = resolve_region(None, both, &ImdsSettings::default())
            .await
            .unwrap();
        assert_eq!(found, (region("us-west-2"), RegionSource::Environment));

        let default_only = env(&[("AWS_REGION", " "), ("AWS_DEFAULT_REGION", "cn-north-1")]);
        let found = resolve_region(None, default_only, &ImdsSettings::default())
            .await
            .unwrap();
        assert_eq!(found, (region("cn-north-1"), RegionSource::Environment));
    }

    #[tokio::test]
    async fn an_invalid_region_variable_is_an_error_naming_it() {
        let bad = env(&[
            ("AWS_REGION", "US-EAST-1"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ]);
        let error = resolve_region(None, bad, &ImdsSettings::default())
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                AwsError::BadRegionVariable {
                    var: "AWS_REGION",
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(
            error.to_string().starts_with("AWS_REGION=\"US-EAST-1\""),
            "{error}"
        );
        assert!(error.hint().unwrap().contains("/etc/molt/agent.toml"));

        let bad = env(&[("AWS_DEFAULT_REGION", "../etc")]);
        let error = resolve_region(None, bad, &ImdsSettings::default())
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                AwsError::BadRegionVariable {
                    var: "AWS_DEFAULT_REGION",
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn instance_ids() {
        for good in ["i-0123456789abcdef0", "i-12345678", "i-abcdef01"] {
            assert_eq!(check_instance_id(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "i-",
            "i-1234567",
            "i-0123456789ABCDEF0",
            "0123456789abcdef0",
            "i-0123456789abcdef0/../x",
            "i-0123456789abcdefg",
            "i-0123456789abcdef0123456789abcdef0",
            "<html>",
        ] {
            assert!(check_instance_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sources_from_credential_features() {
        use AwsCredentialFeature as F;
        let table: &[(&[F], CredentialsSource)] = &[
            (&[], CredentialsSource::Other),
            (&[F::CredentialsEnvVars], CredentialsSource::Environment),
            (&[F::CredentialsProfile], CredentialsSource::Profile),
            // A role assumed from a profile whose source is the environment.
            (
                &[
                    F::CredentialsEnvVars,
                    F::CredentialsStsAssumeRole,
                    F::CredentialsProfile,
                ],
                CredentialsSource::Profile,
            ),
            (
                &[F::CredentialsSso, F::CredentialsProfile],
                CredentialsSource::Sso,
            ),
            (
                &[F::CredentialsProcess, F::CredentialsProfile],
                CredentialsSource::Process,
            ),
            (
                &[F::CredentialsProfileStsWebIdToken, F::CredentialsProfile],
                CredentialsSource::WebIdentity,
            ),
            (
                &[F::CredentialsProfileStsWebIdToken],
                CredentialsSource::WebIdentity,
            ),
            (&[F::CredentialsHttp], CredentialsSource::Container),
            (&[F::CredentialsImds], CredentialsSource::InstanceProfile),
            (&[F::S3ExpressBucket], CredentialsSource::Other),
        ];
        for (features, expected) in table {
            assert_eq!(source_of(features), *expected, "{features:?}");
        }
    }

    #[tokio::test]
    async fn probing_reports_the_source_and_only_a_key_prefix() {
        let mut credentials = Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test",
        );
        credentials
            .get_property_mut_or_default::<Vec<AwsCredentialFeature>>()
            .push(AwsCredentialFeature::CredentialsEnvVars);
        let provider = SharedCredentialsProvider::new(credentials);
        let probe = probe_credentials_detail(&provider).await.unwrap();
        assert_eq!(probe.source, CredentialsSource::Environment);
        assert_eq!(probe.key_prefix.as_deref(), Some("AKIA…"));
        let shown = format!("{probe:?} {}", serde_json::to_string(&probe).unwrap());
        assert!(!shown.contains("IOSFODNN7"), "{shown}");
        assert!(!shown.contains("EXAMPLEKEY"), "{shown}");
    }

    #[derive(Debug)]
    struct Failing(fn() -> CredentialsError);

    impl ProvideCredentials for Failing {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            aws_credential_types::provider::future::ProvideCredentials::ready(Err((self.0)()))
        }
    }

    #[tokio::test]
    async fn nothing_found_is_none_and_a_broken_provider_is_an_error() {
        let none = SharedCredentialsProvider::new(Failing(|| {
            CredentialsError::not_loaded("no credentials here")
        }));
        assert_eq!(
            probe_credentials(&none).await.unwrap(),
            CredentialsSource::None
        );

        let broken = SharedCredentialsProvider::new(Failing(|| {
            CredentialsError::invalid_configuration("profile `default` has no secret key")
        }));
        let error = probe_credentials(&broken).await.unwrap_err();
        assert!(
            matches!(
                error,
                AwsError::Credentials {
                    kind: CredentialsFailure::InvalidConfiguration,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("has no secret key"), "{error}");
        assert!(error.hint().unwrap().contains("~/.aws/credentials"));
    }

    #[test]
    fn names_and_wire_forms() {
        assert_eq!(RegionSource::CommandLine.to_string(), "command line");
        assert_eq!(RegionSource::Imds.to_string(), "IMDS");
        assert_eq!(
            serde_json::to_string(&RegionSource::CommandLine).unwrap(),
            "\"command_line\""
        );
        assert_eq!(
            serde_json::from_str::<RegionSource>("\"imds\"").unwrap(),
            RegionSource::Imds
        );
        assert_eq!(
            serde_json::to_string(&CredentialsSource::InstanceProfile).unwrap(),
            "\"instance_profile\""
        );
        assert_eq!(CredentialsSource::None.to_string(), "none");
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = "x".repeat(500);
        assert_eq!(shown(&long).chars().count(), SHOWN_VALUE_LIMIT + 1);
        assert_eq!(shown("short"), "short");
    }

    #[test]
    fn every_imds_failure_about_the_region_has_a_hint() {
        for failure in [
            ImdsFailure::Disabled,
            ImdsFailure::Unreachable { detail: "x".into() },
            ImdsFailure::TimedOut { after: IMDS_BUDGET },
            ImdsFailure::TokenRefused { detail: "x".into() },
            ImdsFailure::Status { status: 404 },
            ImdsFailure::Invalid {
                value: "x".into(),
                reason: "x",
            },
            ImdsFailure::Endpoint { detail: "x".into() },
            ImdsFailure::Other { detail: "x".into() },
        ] {
            let error = AwsError::Imds {
                query: ImdsQuery::Region,
                failure,
            };
            assert!(error.hint().is_some(), "{error}");
        }
    }
}
