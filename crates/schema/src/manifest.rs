//! The regional manifest, `manifest.json` (SPEC §4): a superset of SSM Agent's
//! `ssm-agent-manifest.json`.
//!
//! It reads SSM's real shape (`SchemaVersion`, `UriFormat`, `Packages[].Files[].
//! AvailableVersions[]` with `Version`, `Checksum` or `CheckSum`, `Status`) and molt's
//! additions (`Region`, `Stable`, `MaxVersion`, `Size`, `Rollout`). Unknown fields are
//! kept and written back, so a newer release tool's fields survive an older one's edit.
//! [`Manifest::to_json`] writes canonical bytes: packages, files and versions sorted,
//! fixed key order, so the same manifest always signs to the same target.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::artifact::{Sha256, platform_of_file};
use crate::platform::Platform;
use crate::region::Region;
use crate::rollout::Rollout;
use crate::version::Version;

/// The TUF target name of a region's manifest.
pub const MANIFEST_TARGET: &str = "manifest.json";

/// Fields this version of molt does not know, kept as they were.
pub type Extra = BTreeMap<String, serde_json::Value>;

/// `SchemaVersion`: `major.minor`. Minor versions only add fields, so any `1.x` is read;
/// another major is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaVersion {
    V1 { minor: u32 },
}

impl SchemaVersion {
    pub const CURRENT: SchemaVersion = SchemaVersion::V1 { minor: 0 };
}

impl fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaVersion::V1 { minor } => write!(f, "1.{minor}"),
        }
    }
}

impl Serialize for SchemaVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SchemaVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let unsupported =
            || serde::de::Error::custom(format!("{UNSUPPORTED_SCHEMA}{s:?}; this molt reads 1.x"));
        let (major, minor) = s.split_once('.').unwrap_or((&s, "0"));
        let minor: u32 = minor.parse().map_err(|_| unsupported())?;
        match major {
            "1" => Ok(SchemaVersion::V1 { minor }),
            _ => Err(unsupported()),
        }
    }
}

const UNSUPPORTED_SCHEMA: &str = "unsupported SchemaVersion ";

/// A version's `Status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Status {
    /// `Active` or empty: installable.
    #[default]
    Active,
    /// Not offered as a target; hosts already on it stay.
    Inactive,
    /// A recall: not offered, and hosts on it move to the highest Active version.
    Deprecated,
    /// A status this molt does not know (SSM's own fixtures carry "Foo"). Never
    /// installable; written back unchanged.
    Other(String),
}

impl Status {
    pub fn as_str(&self) -> &str {
        match self {
            Status::Active => "Active",
            Status::Inactive => "Inactive",
            Status::Deprecated => "Deprecated",
            Status::Other(s) => s,
        }
    }
}

impl std::str::FromStr for Status {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "" | "Active" => Status::Active,
            "Inactive" => Status::Inactive,
            "Deprecated" => Status::Deprecated,
            other => Status::Other(other.to_owned()),
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Status {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let Ok(status) = s.parse();
        Ok(status)
    }
}

/// The whole manifest of one region.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "SchemaVersion")]
    pub schema_version: SchemaVersion,
    /// The region this manifest is for. A host refuses a manifest of another region.
    #[serde(rename = "Region", default, skip_serializing_if = "Option::is_none")]
    pub region: Option<Region>,
    /// SSM's download URL format; informational in molt (TUF target names decide).
    #[serde(
        rename = "UriFormat",
        alias = "URIFormat",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub uri_format: Option<String>,
    /// The version `--target-version stable` resolves to.
    #[serde(rename = "Stable", default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<Version>,
    /// A fleet-wide ceiling: nothing above it is offered, and hosts above it move down.
    #[serde(
        rename = "MaxVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_version: Option<Version>,
    #[serde(rename = "Packages", default)]
    pub packages: Vec<Package>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Package {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Files", default)]
    pub files: Vec<FileEntry>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One archive name of a package, e.g. `molt-agent-linux-amd64.tar.gz`, and the versions
/// it is available in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "AvailableVersions", default)]
    pub available_versions: Vec<VersionEntry>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionEntry {
    #[serde(rename = "Version")]
    pub version: Version,
    /// sha256 of the archive. Informational: TUF's hashes decide, and a checksum that
    /// disagrees with TUF is a verification failure. SSM writes empty strings; those read
    /// as absent.
    #[serde(
        rename = "Checksum",
        alias = "CheckSum",
        default,
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub checksum: Option<Sha256>,
    #[serde(rename = "Size", default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(rename = "Status", default)]
    pub status: Status,
    #[serde(rename = "Rollout", default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// When this version was first published to this region (molt's rollout guards time
    /// bake periods from it).
    #[serde(rename = "Published", default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Timestamp>,
    /// Set by `release-manifest rollout halt`: no host moves to this version while it is
    /// halted; hosts already on it stay.
    #[serde(rename = "Halted", default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<Halt>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A halted rollout: when, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Halt {
    #[serde(rename = "At")]
    pub at: Timestamp,
    #[serde(rename = "Reason")]
    pub reason: String,
}

fn empty_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Sha256>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s.as_deref() {
        None | Some("") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// Why bytes are not a usable manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("manifest has an unsupported SchemaVersion: {0}")]
    UnsupportedSchema(String),
    #[error("manifest lists package {0:?} twice")]
    DuplicatePackage(String),
    #[error("manifest lists file {file:?} twice in package {package:?}")]
    DuplicateFile { package: String, file: String },
    #[error("manifest lists version {version} twice for file {file:?}")]
    DuplicateVersion { file: String, version: Version },
    #[error(
        "manifest file {file:?} does not belong to package {package:?} (names must start with \"{package}-\")"
    )]
    ForeignFile { package: String, file: String },
}

/// One version of one package for one platform, as the manifest lists it.
#[derive(Clone, Copy, Debug)]
pub struct Offer<'a> {
    pub package: &'a Package,
    pub file: &'a FileEntry,
    pub platform: Platform,
    pub entry: &'a VersionEntry,
}

impl Manifest {
    /// An empty manifest for a region.
    pub fn new(region: Region) -> Manifest {
        Manifest {
            schema_version: SchemaVersion::CURRENT,
            region: Some(region),
            uri_format: None,
            stable: None,
            max_version: None,
            packages: Vec::new(),
            extra: Extra::new(),
        }
    }

    /// Parses and checks a manifest.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| {
            let text = e.to_string();
            match text.strip_prefix(UNSUPPORTED_SCHEMA) {
                Some(rest) => ManifestError::UnsupportedSchema(rest.to_owned()),
                None => ManifestError::Json(e),
            }
        })?;
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<(), ManifestError> {
        let mut packages = BTreeSet::new();
        for p in &self.packages {
            if !packages.insert(&p.name) {
                return Err(ManifestError::DuplicatePackage(p.name.clone()));
            }
            let mut files = BTreeSet::new();
            for f in &p.files {
                if !files.insert(&f.name) {
                    return Err(ManifestError::DuplicateFile {
                        package: p.name.clone(),
                        file: f.name.clone(),
                    });
                }
                if !f.name.starts_with(&format!("{}-", p.name)) {
                    return Err(ManifestError::ForeignFile {
                        package: p.name.clone(),
                        file: f.name.clone(),
                    });
                }
                let mut versions = BTreeSet::new();
                for v in &f.available_versions {
                    if !versions.insert(&v.version) {
                        return Err(ManifestError::DuplicateVersion {
                            file: f.name.clone(),
                            version: v.version.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Canonical, pretty-printed JSON with a trailing newline: packages, files and
    /// versions sorted, so equal manifests give equal bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut m = self.clone();
        m.packages.sort_by(|a, b| a.name.cmp(&b.name));
        for p in &mut m.packages {
            p.files.sort_by(|a, b| a.name.cmp(&b.name));
            for f in &mut p.files {
                f.available_versions
                    .sort_by(|a, b| a.version.cmp(&b.version));
            }
        }
        // Serialising these types cannot fail: every map key is a string and every
        // value is plain data. Fall back to an empty object rather than panic.
        let mut out = serde_json::to_vec_pretty(&m).unwrap_or_else(|_| b"{}".to_vec());
        out.push(b'\n');
        out
    }

    pub fn package(&self, name: &str) -> Option<&Package> {
        self.packages.iter().find(|p| p.name == name)
    }

    /// Every version of `package` for `platform`, in manifest order. Files whose name
    /// names no platform molt knows (SSM's `ubuntu-amd64`) are passed over.
    pub fn offers<'a>(&'a self, package: &str, platform: Platform) -> Vec<Offer<'a>> {
        let Some(pkg) = self.package(package) else {
            return Vec::new();
        };
        pkg.files
            .iter()
            .filter(|f| platform_of_file(&pkg.name, &f.name) == Some(platform))
            .flat_map(|f| {
                f.available_versions.iter().map(move |entry| Offer {
                    package: pkg,
                    file: f,
                    platform,
                    entry,
                })
            })
            .collect()
    }

    /// The entry for one version of `package` on `platform`.
    pub fn offer<'a>(
        &'a self,
        package: &str,
        version: &Version,
        platform: Platform,
    ) -> Option<Offer<'a>> {
        self.offers(package, platform)
            .into_iter()
            .find(|o| &o.entry.version == version)
    }

    /// Every version of `package` on any platform, with the platforms it is offered on.
    pub fn versions(&self, package: &str) -> BTreeMap<Version, BTreeSet<Platform>> {
        let mut out: BTreeMap<Version, BTreeSet<Platform>> = BTreeMap::new();
        if let Some(pkg) = self.package(package) {
            for f in &pkg.files {
                for v in &f.available_versions {
                    let platforms = out.entry(v.version.clone()).or_default();
                    if let Some(p) = platform_of_file(&pkg.name, &f.name) {
                        platforms.insert(p);
                    }
                }
            }
        }
        out
    }

    /// The status of `version` of `package` on `platform`. When the version has no file
    /// for `platform`, a recall on any platform wins, else the first file's status.
    pub fn status_of(
        &self,
        package: &str,
        version: &Version,
        platform: Platform,
    ) -> Option<Status> {
        let pkg = self.package(package)?;
        let entries: Vec<(&FileEntry, &VersionEntry)> = pkg
            .files
            .iter()
            .flat_map(|f| f.available_versions.iter().map(move |v| (f, v)))
            .filter(|(_, v)| &v.version == version)
            .collect();
        if let Some((_, v)) = entries
            .iter()
            .find(|(f, _)| platform_of_file(&pkg.name, &f.name) == Some(platform))
        {
            return Some(v.status.clone());
        }
        if entries.iter().any(|(_, v)| v.status == Status::Deprecated) {
            return Some(Status::Deprecated);
        }
        entries.first().map(|(_, v)| v.status.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SSM_FIXTURE: &str = include_str!("../tests/fixtures/ssm-agent-manifest.json");
    const MOLT_FIXTURE: &str = include_str!("../tests/fixtures/molt-manifest.json");

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn reads_ssm_shape_with_both_checksum_spellings() {
        let m = Manifest::parse(SSM_FIXTURE.as_bytes()).unwrap();
        assert_eq!(m.schema_version, SchemaVersion::V1 { minor: 0 });
        assert!(m.uri_format.as_deref().unwrap().contains("{PackageName}"));
        let agent = m.package("molt-agent").unwrap();
        let linux = agent
            .files
            .iter()
            .find(|f| f.name == "molt-agent-linux-amd64.tar.gz")
            .unwrap();
        // both spellings of the key are in the fixture
        assert!(SSM_FIXTURE.contains("\"CheckSum\""));
        assert!(SSM_FIXTURE.contains("\"Checksum\""));
        assert!(
            linux
                .available_versions
                .iter()
                .all(|e| e.checksum.is_some())
        );
        let statuses: BTreeSet<String> = linux
            .available_versions
            .iter()
            .map(|e| e.status.to_string())
            .collect();
        assert!(
            statuses.contains("Active")
                && statuses.contains("Inactive")
                && statuses.contains("Deprecated")
        );
        // SSM's empty status means Active; an unknown status is kept, never installable
        assert!(
            agent
                .files
                .iter()
                .flat_map(|f| &f.available_versions)
                .any(|e| e.status == Status::Other("Foo".into()))
        );
        // real SSM packages parse too, and their ubuntu files name no platform
        assert!(m.package("amazon-ssm-agent").is_some());
        assert!(m.offers("amazon-ssm-agent", Platform::LinuxAmd64).len() > 1);
        assert_eq!(
            platform_of_file("amazon-ssm-agent", "amazon-ssm-agent-ubuntu-amd64.tar.gz"),
            None
        );
    }

    #[test]
    fn reads_molt_superset() {
        let m = Manifest::parse(MOLT_FIXTURE.as_bytes()).unwrap();
        assert_eq!(m.region.as_ref().unwrap().as_str(), "us-east-1");
        assert_eq!(m.stable, Some(v("1.1.0")));
        assert_eq!(m.max_version, Some(v("1.3.0")));
        let o = m
            .offer("molt-agent", &v("1.2.0"), Platform::LinuxAmd64)
            .unwrap();
        assert_eq!(o.entry.size, Some(4096));
        assert!(o.entry.rollout.is_some());
    }

    #[test]
    fn unknown_fields_are_tolerated_and_kept() {
        let json = r#"{"SchemaVersion":"1.3","Future":{"x":1},"Packages":[{"Name":"molt-agent","Tier":"gold","Files":[
            {"Name":"molt-agent-linux-amd64.tar.gz","AvailableVersions":[{"Version":"1.0.0","Status":"Active","Signer":"ci"}]}]}]}"#;
        let m = Manifest::parse(json.as_bytes()).unwrap();
        assert_eq!(m.schema_version, SchemaVersion::V1 { minor: 3 });
        let out = String::from_utf8(m.to_json()).unwrap();
        assert!(
            out.contains("\"Future\"") && out.contains("\"Tier\"") && out.contains("\"Signer\"")
        );
        assert_eq!(Manifest::parse(out.as_bytes()).unwrap(), m);
    }

    #[test]
    fn unknown_major_schema_is_a_typed_error() {
        let err = Manifest::parse(br#"{"SchemaVersion":"2.0","Packages":[]}"#).unwrap_err();
        assert!(
            matches!(err, ManifestError::UnsupportedSchema(ref s) if s.contains("2.0")),
            "{err}"
        );
        let err = Manifest::parse(br#"{"SchemaVersion":"one","Packages":[]}"#).unwrap_err();
        assert!(matches!(err, ManifestError::UnsupportedSchema(_)), "{err}");
        let err = Manifest::parse(br#"{"Packages":[]}"#).unwrap_err();
        assert!(matches!(err, ManifestError::Json(_)), "{err}");
    }

    #[test]
    fn broken_manifests() {
        let dup_pkg = r#"{"SchemaVersion":"1.0","Packages":[{"Name":"molt-agent","Files":[]},{"Name":"molt-agent","Files":[]}]}"#;
        assert!(matches!(
            Manifest::parse(dup_pkg.as_bytes()),
            Err(ManifestError::DuplicatePackage(_))
        ));
        let dup_ver = r#"{"SchemaVersion":"1.0","Packages":[{"Name":"molt-agent","Files":[{"Name":"molt-agent-linux-amd64.tar.gz","AvailableVersions":[{"Version":"1.0.0"},{"Version":"1.0.0"}]}]}]}"#;
        assert!(matches!(
            Manifest::parse(dup_ver.as_bytes()),
            Err(ManifestError::DuplicateVersion { .. })
        ));
        let foreign = r#"{"SchemaVersion":"1.0","Packages":[{"Name":"molt-agent","Files":[{"Name":"molt-updater-linux-amd64.tar.gz","AvailableVersions":[]}]}]}"#;
        assert!(matches!(
            Manifest::parse(foreign.as_bytes()),
            Err(ManifestError::ForeignFile { .. })
        ));
        let bad_sum = r#"{"SchemaVersion":"1.0","Packages":[{"Name":"molt-agent","Files":[{"Name":"molt-agent-linux-amd64.tar.gz","AvailableVersions":[{"Version":"1.0.0","Checksum":"xyz"}]}]}]}"#;
        assert!(matches!(
            Manifest::parse(bad_sum.as_bytes()),
            Err(ManifestError::Json(_))
        ));
        let bad_version = r#"{"SchemaVersion":"1.0","Packages":[{"Name":"molt-agent","Files":[{"Name":"molt-agent-linux-amd64.tar.gz","AvailableVersions":[{"Version":"v1"}]}]}]}"#;
        assert!(matches!(
            Manifest::parse(bad_version.as_bytes()),
            Err(ManifestError::Json(_))
        ));
        let bad_region = r#"{"SchemaVersion":"1.0","Region":"US East","Packages":[]}"#;
        assert!(matches!(
            Manifest::parse(bad_region.as_bytes()),
            Err(ManifestError::Json(_))
        ));
        assert!(matches!(Manifest::parse(b"{"), Err(ManifestError::Json(_))));
    }

    #[test]
    fn output_is_deterministic() {
        let a = Manifest::parse(SSM_FIXTURE.as_bytes()).unwrap();
        let mut b = a.clone();
        b.packages.reverse();
        for p in &mut b.packages {
            p.files.reverse();
            for f in &mut p.files {
                f.available_versions.reverse();
            }
        }
        assert_eq!(a.to_json(), b.to_json());
        let again = Manifest::parse(&a.to_json()).unwrap();
        assert_eq!(again.to_json(), a.to_json());
        // the canonical form uses molt's spelling of the checksum key
        let text = String::from_utf8(a.to_json()).unwrap();
        assert!(!text.contains("CheckSum"));
    }

    #[test]
    fn status_is_per_platform() {
        let m = Manifest::parse(SSM_FIXTURE.as_bytes()).unwrap();
        // 2.2.96.0 is Active on amd64 but Deprecated (recalled) on arm64 only.
        let ver = v("2.2.96.0");
        assert_eq!(
            m.status_of("amazon-ssm-agent", &ver, Platform::LinuxAmd64),
            Some(Status::Active)
        );
        assert_eq!(
            m.status_of("amazon-ssm-agent", &ver, Platform::LinuxArm64),
            Some(Status::Deprecated)
        );
        // no file for musl: the recall elsewhere wins
        assert_eq!(
            m.status_of("amazon-ssm-agent", &ver, Platform::LinuxMuslAmd64),
            Some(Status::Deprecated)
        );
        assert_eq!(
            m.status_of("amazon-ssm-agent", &v("9.9.9"), Platform::LinuxAmd64),
            None
        );
    }
}
