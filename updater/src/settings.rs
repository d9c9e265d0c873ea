//! What one run of the updater works with, from the command line, the config file and
//! the environment, in that order of precedence.

use std::path::PathBuf;
use std::time::Duration;

use molt_fetch::aws::{self, ImdsSettings, RegionSource};
use molt_fetch::s3::S3Location;
use molt_fetch::transport::{HttpSettings, Url};
use molt_host::config::{Config, ServiceKind};
use molt_host::{DEFAULT_ROOT, HostLayout};
use molt_schema::region::{SourceTemplate, Template};
use molt_schema::{Platform, Region};

/// Everything an update needs, resolved.
#[derive(Clone, Debug)]
pub struct Settings {
    pub layout: HostLayout,
    pub region: Option<(Region, &'static str)>,
    pub source: Option<Template>,
    pub bucket: Option<Template>,
    pub domain: Option<String>,
    pub trusted_root: Option<PathBuf>,
    pub platform: Option<Platform>,
    pub service: ServiceKind,
    pub soak: Duration,
    pub health_timeout: Duration,
    pub stop_grace: Duration,
    pub http: HttpSettings,
    pub config_path: Option<PathBuf>,
    /// Allow IMDSv1 when IMDSv2 does not answer (`imds_v1_fallback = true`).
    pub imds_v1_fallback: bool,
}

/// Where the region's repository is, and whether requests to it are signed.
#[derive(Clone, Debug)]
pub struct Repository {
    pub url: Url,
    /// `s3://` sources: a private bucket, read with SigV4 and the AWS credentials chain.
    pub private: Option<S3Location>,
}

/// Command-line values that override the config.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub root: Option<PathBuf>,
    pub region: Option<Region>,
    pub source: Option<String>,
    pub platform: Option<Platform>,
    pub trusted_root: Option<PathBuf>,
    pub service: Option<ServiceKind>,
    pub soak: Option<Duration>,
    pub health_timeout: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("no repository source is configured")]
    NoSource,
    #[error("cannot tell this host's region")]
    NoRegion,
    #[error("cannot tell this host's region")]
    Region(#[source] aws::AwsError),
    #[error("the source {0:?} is not a usable URL template")]
    BadSource(String, #[source] molt_schema::region::TemplateError),
    #[error("the source renders to {url:?}, which is not a URL")]
    BadUrl { url: String },
    #[error("the source renders to {url:?}, which is not a usable s3:// location")]
    BadS3 {
        url: String,
        #[source]
        source: molt_fetch::s3::S3Error,
    },
    #[error(transparent)]
    Platform(#[from] molt_schema::platform::PlatformError),
}

const REGION_HINT: &str = "set `region` in /etc/molt/agent.toml, pass --region, or set AWS_REGION";

impl SettingsError {
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SettingsError::NoSource => {
                Some("set `source` (and `bucket`) in /etc/molt/agent.toml, or pass --source URL")
            }
            // The AWS error knows its cause (a bad AWS_REGION, IMDS disabled, unreachable or
            // refusing a token) and its fix.
            SettingsError::Region(e) => e.hint().or(Some(REGION_HINT)),
            SettingsError::NoRegion => Some(REGION_HINT),
            SettingsError::BadUrl { .. } => Some(
                "write a directory as a file:// URL with an absolute path (file:///srv/molt/us-east-1), or give an https:// URL or s3://bucket/prefix",
            ),
            _ => None,
        }
    }
}

fn default_service() -> ServiceKind {
    if std::path::Path::new("/run/systemd/system").is_dir() {
        ServiceKind::Systemd
    } else {
        ServiceKind::Direct
    }
}

impl Settings {
    /// Combines the overrides, the config and the environment (`lookup`).
    pub fn resolve(
        config: &Config,
        config_path: Option<PathBuf>,
        o: Overrides,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, SettingsError> {
        let root = o
            .root
            .or(config.root.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
        let region = if let Some(r) = o.region {
            Some((r, "command line"))
        } else if let Some(r) = &config.region {
            Some((r.clone(), "config"))
        } else {
            ["AWS_REGION", "AWS_DEFAULT_REGION"]
                .into_iter()
                .find_map(|k| lookup(k).and_then(|v| v.parse::<Region>().ok()))
                .map(|r| (r, "environment"))
        };
        let source = match o.source {
            Some(s) => {
                Some(Template::parse(&s).map_err(|e| SettingsError::BadSource(s.clone(), e))?)
            }
            None => config.source.clone(),
        };
        let mut http = HttpSettings {
            user_agent: format!("molt/{}", molt_host::build::version()),
            ..HttpSettings::default()
        };
        if let Some(d) = config.updater.download_deadline {
            http.deadline = d;
        }
        if let Some(t) = config.updater.min_throughput {
            http.min_throughput = t;
        }
        Ok(Settings {
            layout: HostLayout::new(root),
            region,
            source,
            bucket: config.bucket.clone(),
            domain: config.domain.clone(),
            trusted_root: o.trusted_root.or(config.trusted_root.clone()),
            platform: o.platform.or(config.platform),
            service: o
                .service
                .or(config.updater.service)
                .unwrap_or_else(default_service),
            soak: o
                .soak
                .or(config.updater.soak)
                .unwrap_or(Duration::from_secs(30)),
            health_timeout: o
                .health_timeout
                .or(config.updater.health_timeout)
                .unwrap_or(Duration::from_secs(60)),
            stop_grace: config.updater.stop_grace.unwrap_or(Duration::from_secs(10)),
            http,
            config_path,
            imds_v1_fallback: config.imds_v1_fallback,
        })
    }

    pub fn region(&self) -> Result<&Region, SettingsError> {
        self.region
            .as_ref()
            .map(|(r, _)| r)
            .ok_or(SettingsError::NoRegion)
    }

    /// The region from the command line, the config or the environment, else from IMDS
    /// (SPEC §3); IMDS is asked only when nothing else answers.
    pub async fn resolve_region(&mut self) -> Result<Region, SettingsError> {
        if let Some((r, _)) = &self.region {
            return Ok(r.clone());
        }
        let imds = ImdsSettings {
            v1_fallback: self.imds_v1_fallback,
        };
        let (region, source) = aws::resolve_region(None, |k| std::env::var(k).ok(), &imds)
            .await
            .map_err(SettingsError::Region)?;
        let shown = match source {
            RegionSource::Imds => "IMDS",
            _ => "environment",
        };
        self.region = Some((region.clone(), shown));
        Ok(region)
    }

    /// The platform: configured, else detected.
    pub fn platform(&self) -> Result<Platform, SettingsError> {
        match self.platform {
            Some(p) => Ok(p),
            None => Ok(Platform::detect()?),
        }
    }

    /// The region repository: its base URL, and for `s3://` sources the bucket to sign
    /// requests for. `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` point `s3://` sources at an
    /// S3-compatible endpoint (path-style), as AWS SDKs do.
    pub fn repository(&self) -> Result<Repository, SettingsError> {
        let source = self.source.clone().ok_or(SettingsError::NoSource)?;
        let region = self.region()?;
        let tpl = SourceTemplate {
            source,
            bucket: self.bucket.clone(),
            domain_override: self.domain.clone(),
        };
        let url = tpl
            .url_for(region)
            .map_err(|e| SettingsError::BadSource(tpl.source.as_str().to_owned(), e))?;
        if url.starts_with("s3://") {
            let bad = |source| SettingsError::BadS3 {
                url: url.clone(),
                source,
            };
            let location: S3Location = url.parse().map_err(bad)?;
            let base = location
                .base_url(region, &|k| std::env::var(k).ok())
                .map_err(bad)?;
            return Ok(Repository {
                url: base,
                private: Some(location),
            });
        }
        let url = Url::parse(&url).map_err(|_| SettingsError::BadUrl { url })?;
        Ok(Repository { url, private: None })
    }

    /// The trusted root to load with: configured, else the one saved at first install.
    pub fn trusted_root_path(&self) -> PathBuf {
        self.trusted_root
            .clone()
            .unwrap_or_else(|| self.saved_trusted_root())
    }

    /// Where the first install keeps the trusted root it was given.
    pub fn saved_trusted_root(&self) -> PathBuf {
        self.layout.tuf_dir().join("trusted-root.json")
    }
}

/// The service manager the settings ask for: systemd's `molt-agent` unit, or direct
/// control with a pid file.
pub fn service_for(settings: &Settings) -> Box<dyn crate::service::ServiceManager> {
    match settings.service {
        ServiceKind::Systemd => Box::new(crate::service::SystemdService::new("molt-agent")),
        ServiceKind::Direct => {
            let mut env = vec![(
                "MOLT_ROOT".to_owned(),
                settings.layout.root().display().to_string(),
            )];
            if let Some(c) = &settings.config_path {
                env.push(("MOLT_CONFIG".to_owned(), c.display().to_string()));
            }
            Box::new(
                crate::service::DirectService::new(settings.layout.clone(), settings.stop_grace)
                    .with_env(env),
            )
        }
    }
}
