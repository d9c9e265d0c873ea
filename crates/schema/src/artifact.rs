//! Package names, checksums and the TUF target names that carry a version.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::platform::Platform;
use crate::version::Version;

/// The packages molt publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PackageName {
    /// `molt-agent`: `bin/agent`, `bin/updater`, `VERSION`.
    Agent,
    /// `molt-updater`: the standalone updater, `bin/updater`, `VERSION`.
    Updater,
}

/// One file a package's archive holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackageFile {
    /// Path inside the archive, with `/` separators and no leading `/`.
    pub path: &'static str,
    /// True for programs (mode 0755 on unix), false for data (0644).
    pub executable: bool,
}

impl PackageName {
    pub const ALL: [PackageName; 2] = [PackageName::Agent, PackageName::Updater];

    pub fn as_str(self) -> &'static str {
        match self {
            PackageName::Agent => "molt-agent",
            PackageName::Updater => "molt-updater",
        }
    }

    /// Exactly the files this package's archive holds (SPEC §4), in archive order.
    /// Windows archives name the programs with `.exe`; see [`PackageName::files_for`].
    pub fn files(self) -> &'static [PackageFile] {
        const AGENT: &[PackageFile] = &[
            PackageFile {
                path: "VERSION",
                executable: false,
            },
            PackageFile {
                path: "bin/agent",
                executable: true,
            },
            PackageFile {
                path: "bin/updater",
                executable: true,
            },
        ];
        const UPDATER: &[PackageFile] = &[
            PackageFile {
                path: "VERSION",
                executable: false,
            },
            PackageFile {
                path: "bin/updater",
                executable: true,
            },
        ];
        match self {
            PackageName::Agent => AGENT,
            PackageName::Updater => UPDATER,
        }
    }

    /// The files for a platform: on windows, programs carry `.exe`.
    pub fn files_for(self, platform: Platform) -> Vec<(String, bool)> {
        self.files()
            .iter()
            .map(|f| {
                let path = if f.executable && !platform.is_unix() {
                    format!("{}.exe", f.path)
                } else {
                    f.path.to_owned()
                };
                (path, f.executable)
            })
            .collect()
    }

    /// The archive's file name, e.g. `molt-agent-linux-amd64.tar.gz`.
    pub fn file_name(self, platform: Platform) -> String {
        format!(
            "{}-{}.{}",
            self.as_str(),
            platform,
            platform.archive_kind().extension()
        )
    }

    /// The TUF target name, e.g. `molt-agent-1.4.0-linux-amd64.tar.gz` (see
    /// [`target_name`]).
    pub fn target_name(self, version: &Version, platform: Platform) -> String {
        target_name(self.as_str(), version, &self.file_name(platform))
    }

    /// Where `package` puts the archive below its output directory, e.g.
    /// `molt-agent/1.4.0/molt-agent-linux-amd64.tar.gz` (the dist layout, which is not the
    /// repository's).
    pub fn dist_path(self, version: &Version, platform: Platform) -> String {
        format!("{}/{}/{}", self.as_str(), version, self.file_name(platform))
    }

    /// Reads a platform back from a file name of this package, e.g.
    /// `molt-agent-linux-musl-amd64.tar.gz` → `linux-musl-amd64`. The extension must
    /// be the one that platform uses.
    pub fn platform_of_file(self, file_name: &str) -> Option<Platform> {
        platform_of_file(self.as_str(), file_name)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown package {0:?}; molt publishes molt-agent and molt-updater")]
pub struct UnknownPackage(pub String);

impl FromStr for PackageName {
    type Err = UnknownPackage;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PackageName::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPackage(s.to_owned()))
    }
}

impl fmt::Display for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A SHA-256 digest, parsed from 64 hex digits (either case) and printed in lower case.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256([u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a SHA-256 digest (64 hex digits)")]
pub struct BadSha256(pub String);

impl Sha256 {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Sha256(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Hashes a byte slice.
    pub fn digest(data: &[u8]) -> Self {
        use sha2::Digest;
        Sha256(sha2::Sha256::digest(data).into())
    }
}

impl FromStr for Sha256 {
    type Err = BadSha256;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| BadSha256(s.to_owned()))?;
        Ok(Sha256(out))
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The hash `.valid` records for each file of an installed version, written as
/// `blake3:<64 hex digits>`. Every extracted byte is hashed on the install path, and BLAKE3
/// is about three times as fast there as SHA-256 even with SHA-NI (docs/benchmarks.md). A
/// bare 64-digit value is a SHA-256, as updaters before BLAKE3 recorded it; it is still read
/// and checked, with its own algorithm.
///
/// This is the record of what was installed, kept to find a damaged or changed version before
/// it is reused; what a version is trusted for is still the TUF-verified archive it came from.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileHash {
    Blake3([u8; 32]),
    Sha256(Sha256),
}

/// Hashes bytes as they pass, with the algorithm of a [`FileHash`].
pub enum FileHasher {
    Blake3(Box<blake3::Hasher>),
    Sha256(sha2::Sha256),
}

impl FileHasher {
    /// The hasher new records use.
    pub fn new() -> FileHasher {
        FileHasher::Blake3(Box::new(blake3::Hasher::new()))
    }

    /// A hasher with the algorithm `recorded` was made with, to check a file against it.
    pub fn like(recorded: &FileHash) -> FileHasher {
        match recorded {
            FileHash::Blake3(_) => FileHasher::new(),
            FileHash::Sha256(_) => FileHasher::Sha256(sha2::Digest::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            FileHasher::Blake3(h) => {
                h.update(data);
            }
            FileHasher::Sha256(h) => sha2::Digest::update(h, data),
        }
    }

    pub fn finish(self) -> FileHash {
        match self {
            FileHasher::Blake3(h) => FileHash::Blake3(*h.finalize().as_bytes()),
            FileHasher::Sha256(h) => FileHash::Sha256(Sha256(sha2::Digest::finalize(h).into())),
        }
    }

    /// Feeds everything `reader` yields, in 64 KiB blocks (BLAKE3 is slow on small ones).
    pub fn read_all(mut self, reader: impl std::io::Read) -> std::io::Result<FileHash> {
        std::io::copy(
            &mut std::io::BufReader::with_capacity(64 * 1024, reader),
            &mut self,
        )?;
        Ok(self.finish())
    }
}

impl std::io::Write for FileHasher {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.update(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl fmt::Debug for FileHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileHasher::Blake3(_) => "FileHasher(blake3)",
            FileHasher::Sha256(_) => "FileHasher(sha256)",
        })
    }
}

impl Default for FileHasher {
    fn default() -> Self {
        FileHasher::new()
    }
}

impl FileHash {
    /// The hash new records use, of a byte slice.
    pub fn of(data: &[u8]) -> FileHash {
        let mut h = FileHasher::new();
        h.update(data);
        h.finish()
    }
}

/// A value that is neither `blake3:<64 hex digits>` nor 64 hex digits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a file hash (blake3:<64 hex digits>, or 64 hex digits of SHA-256)")]
pub struct BadFileHash(pub String);

impl FromStr for FileHash {
    type Err = BadFileHash;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadFileHash(s.to_owned());
        match s.strip_prefix("blake3:") {
            Some(hex_digits) => {
                let mut out = [0u8; 32];
                hex::decode_to_slice(hex_digits, &mut out).map_err(|_| bad())?;
                Ok(FileHash::Blake3(out))
            }
            None => s.parse().map(FileHash::Sha256).map_err(|_| bad()),
        }
    }
}

impl fmt::Display for FileHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileHash::Blake3(b) => write!(f, "blake3:{}", hex::encode(b)),
            FileHash::Sha256(s) => write!(f, "{s}"),
        }
    }
}

impl fmt::Debug for FileHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileHash({self})")
    }
}

impl Serialize for FileHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FileHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A file, with the length and SHA-256 of its bytes as [`HashedFile::hash`] read them in one
/// pass. That function is the only way to make one, so the digest always belongs to the file:
/// the publisher hashes each archive once and hands the same `HashedFile` to every region,
/// instead of hashing it again for each use.
///
/// The file can still change on disk after it was hashed. Whoever sends or copies its bytes
/// checks them against the digest on the way: [`HashedFile::read_verified`] here, and an S3
/// upload through the checksum the server verifies (`store::Body`).
#[derive(Clone, PartialEq, Eq)]
pub struct HashedFile {
    path: std::path::PathBuf,
    len: u64,
    sha256: Sha256,
}

impl HashedFile {
    /// Reads `path` once, counting and hashing its bytes.
    pub fn hash(path: impl Into<std::path::PathBuf>) -> std::io::Result<HashedFile> {
        let path = path.into();
        let (len, sha256) = hash_reader(std::fs::File::open(&path)?)?;
        Ok(HashedFile { path, len, sha256 })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn sha256(&self) -> Sha256 {
        self.sha256
    }

    /// The file's bytes, read whole, after checking that they are still the ones hashed
    /// (length and SHA-256); an `InvalidData` error says that the file changed.
    pub fn read_verified(&self) -> std::io::Result<Vec<u8>> {
        let bytes = std::fs::read(&self.path)?;
        if bytes.len() as u64 != self.len || Sha256::digest(&bytes) != self.sha256 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} changed after it was hashed (it had {} bytes, SHA-256 {})",
                    self.path.display(),
                    self.len,
                    self.sha256
                ),
            ));
        }
        Ok(bytes)
    }
}

impl fmt::Debug for HashedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashedFile")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("sha256", &format_args!("{}", self.sha256))
            .finish()
    }
}

/// The platform a file of `package` is for: `<package>-<platform>.<ext>`, with the
/// extension that platform uses.
pub fn platform_of_file(package: &str, file_name: &str) -> Option<Platform> {
    let rest = file_name.strip_prefix(package)?.strip_prefix('-')?;
    Platform::ALL.into_iter().find(|p| {
        rest.strip_prefix(p.as_str())
            .and_then(|ext| ext.strip_prefix('.'))
            .is_some_and(|ext| ext == p.archive_kind().extension())
    })
}

/// Length and SHA-256 of everything `reader` yields.
pub fn hash_reader(reader: impl std::io::Read) -> std::io::Result<(u64, Sha256)> {
    let mut hashing = HashingReader::new(reader);
    std::io::copy(
        &mut std::io::BufReader::with_capacity(256 * 1024, &mut hashing),
        &mut std::io::sink(),
    )?;
    Ok(hashing.finish())
}

/// A reader that passes its bytes through and keeps their length and SHA-256, for a
/// consumer that must see the very bytes that were hashed (the release tool's archive
/// check).
pub struct HashingReader<R> {
    inner: R,
    len: u64,
    hasher: sha2::Sha256,
}

impl<R: std::io::Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            len: 0,
            hasher: sha2::Digest::new(),
        }
    }

    /// The length and SHA-256 of what was read so far.
    pub fn finish(self) -> (u64, Sha256) {
        (self.len, Sha256(sha2::Digest::finalize(self.hasher).into()))
    }
}

impl<R> fmt::Debug for HashingReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashingReader")
            .field("len", &self.len)
            .finish()
    }
}

impl<R: std::io::Read> std::io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// The TUF target name of `package`'s archive `file` at `version`:
/// `<package>-<version>-<platform>.<ext>` (the file name with the version after the
/// package's name), e.g. `molt-agent-1.4.0-linux-amd64.tar.gz`. It has no `/`, so a
/// consistent snapshot stores it at `targets/<sha256>.<name>`, where tough and the TUF
/// specification (and so python-tuf and every other TUF 1.0 client) agree to look.
pub fn target_name(package: &str, version: &Version, file: &str) -> String {
    let rest = file
        .strip_prefix(package)
        .and_then(|r| r.strip_prefix('-'))
        .unwrap_or(file);
    format!("{package}-{version}-{rest}")
}

/// A relative path inside a repository or package tree, checked at construction: no
/// empty or absolute path, no `.` or `..` component, no backslash, no NUL or control
/// character. Like tough's `TargetName`, a value of this type can be joined to a
/// directory without escaping it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArtifactName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsafe artifact name {name:?}: {reason}")]
pub struct BadArtifactName {
    pub name: String,
    pub reason: &'static str,
}

impl ArtifactName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ArtifactName {
    type Err = BadArtifactName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| BadArtifactName {
            name: s.to_owned(),
            reason,
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.starts_with('/') {
            return Err(bad("absolute path"));
        }
        if s.contains('\\') {
            return Err(bad("backslash"));
        }
        if s.chars().any(char::is_control) {
            return Err(bad("control character"));
        }
        if s.len() > 1024 {
            return Err(bad("longer than 1024 bytes"));
        }
        for part in s.split('/') {
            match part {
                "" => return Err(bad("empty path component")),
                "." | ".." => return Err(bad("'.' or '..' component")),
                _ => {}
            }
        }
        Ok(ArtifactName(s.to_owned()))
    }
}

impl fmt::Display for ArtifactName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn file_hashes_name_their_algorithm() {
        let b = FileHash::of(b"abc");
        // the BLAKE3 test vector of "abc"
        assert_eq!(
            b.to_string(),
            "blake3:6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(b.to_string().parse::<FileHash>(), Ok(b));
        let s = Sha256::digest(b"abc");
        let legacy: FileHash = s.to_string().parse().unwrap();
        assert_eq!(legacy, FileHash::Sha256(s));
        assert_eq!(legacy.to_string(), s.to_string());
        let mut h = FileHasher::like(&legacy);
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), legacy);
        assert_eq!(FileHasher::like(&b).read_all(&b"abc"[..]).unwrap(), b);
        for bad in [
            "",
            "blake3:",
            "blake3:zz",
            "sha256:00",
            "BLAKE3:00",
            &"0".repeat(63),
        ] {
            assert!(bad.parse::<FileHash>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn target_names_carry_the_version_and_no_slash() {
        let v: Version = "1.4.0".parse().unwrap();
        assert_eq!(
            PackageName::Agent.target_name(&v, Platform::LinuxAmd64),
            "molt-agent-1.4.0-linux-amd64.tar.gz"
        );
        assert_eq!(
            PackageName::Updater.target_name(&v, Platform::WindowsAmd64),
            "molt-updater-1.4.0-windows-amd64.zip"
        );
        let rc: Version = "2.0.0-rc.1+build.7".parse().unwrap();
        assert_eq!(
            PackageName::Agent.target_name(&rc, Platform::LinuxMuslArm64),
            "molt-agent-2.0.0-rc.1+build.7-linux-musl-arm64.tar.gz"
        );
        // A file that does not start with its package's name keeps it whole.
        assert_eq!(
            target_name("molt-agent", &v, "odd.tar.gz"),
            "molt-agent-1.4.0-odd.tar.gz"
        );
        assert_eq!(
            PackageName::Agent.dist_path(&v, Platform::LinuxAmd64),
            "molt-agent/1.4.0/molt-agent-linux-amd64.tar.gz"
        );
    }

    #[test]
    fn platform_from_file_name() {
        for pkg in PackageName::ALL {
            for p in Platform::ALL {
                assert_eq!(pkg.platform_of_file(&pkg.file_name(p)), Some(p));
            }
        }
        assert_eq!(
            PackageName::Agent.platform_of_file("molt-agent-linux-amd64.zip"),
            None
        );
        assert_eq!(
            PackageName::Agent.platform_of_file("molt-updater-linux-amd64.tar.gz"),
            None
        );
        assert_eq!(
            PackageName::Agent.platform_of_file("molt-agent-linux-amd64.tar.gz.sig"),
            None
        );
    }

    #[test]
    fn sha256_parses_hex_only() {
        let h = Sha256::digest(b"abc");
        assert_eq!(
            h.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(h.to_string().to_uppercase().parse::<Sha256>(), Ok(h));
        assert!("abc".parse::<Sha256>().is_err());
        assert!("zz".repeat(32).parse::<Sha256>().is_err());
    }

    #[test]
    fn artifact_names_refuse_escapes() {
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "./a",
            "a//b",
            "a\\b",
            "a/\u{0}b",
            "a/",
        ] {
            assert!(
                bad.parse::<ArtifactName>().is_err(),
                "{bad:?} must be refused"
            );
        }
        assert!(
            "molt-agent/1.0.0/molt-agent-linux-amd64.tar.gz"
                .parse::<ArtifactName>()
                .is_ok()
        );
    }

    proptest! {
        #[test]
        fn accepted_names_never_escape(s in "[a-z./\\\\]{0,12}") {
            if let Ok(name) = s.parse::<ArtifactName>() {
                let joined = std::path::Path::new("/base").join(name.as_str());
                prop_assert!(joined.starts_with("/base"));
                prop_assert!(joined.components().all(|c| matches!(c,
                    std::path::Component::RootDir | std::path::Component::Normal(_))));
            }
        }
    }
}
