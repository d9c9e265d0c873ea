//! What one run of the updater works with, from the command line, the config file and
//! the environment, in that order of precedence.

use std::path::PathBuf;
use std::time::Duration;

use release_manifest::host::config::{Config, ServiceKind};
use release_manifest::host::{DEFAULT_ROOT, HostLayout};
use release_manifest::region::{SourceTemplate, Template};
use release_manifest::transport::{HttpSettings, Url};
use release_manifest::{Platform, Region};

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
    #[error("the source {0:?} is not a usable URL template")]
    BadSource(String, #[source] release_manifest::region::TemplateError),
    #[error("the source renders to {url:?}, which is not a URL")]
    BadUrl { url: String },
    #[error(
        "s3:// sources (private buckets signed with SigV4) are not supported by this updater yet; use an https:// source"
    )]
    S3NotYetSupported,
    #[error(transparent)]
    Platform(#[from] release_manifest::platform::PlatformError),
}

impl SettingsError {
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SettingsError::NoSource => {
                Some("set `source` (and `bucket`) in /etc/molt/agent.toml, or pass --source URL")
            }
            SettingsError::NoRegion => {
                Some("set `region` in /etc/molt/agent.toml, pass --region, or set AWS_REGION")
            }
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
        let mut http = HttpSettings::default();
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
        })
    }

    pub fn region(&self) -> Result<&Region, SettingsError> {
        self.region
            .as_ref()
            .map(|(r, _)| r)
            .ok_or(SettingsError::NoRegion)
    }

    /// The platform: configured, else detected.
    pub fn platform(&self) -> Result<Platform, SettingsError> {
        match self.platform {
            Some(p) => Ok(p),
            None => Ok(Platform::detect()?),
        }
    }

    /// The region repository's base URL.
    pub fn source_url(&self) -> Result<Url, SettingsError> {
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
            return Err(SettingsError::S3NotYetSupported);
        }
        Url::parse(&url).map_err(|_| SettingsError::BadUrl { url })
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
