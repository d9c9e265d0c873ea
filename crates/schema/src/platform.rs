//! Platforms (`<os>-<arch>`, with `musl` between them for musl Linux) and host detection.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A platform a package can be built for. See SPEC §3 for the names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Platform {
    LinuxAmd64,
    LinuxArm64,
    LinuxMuslAmd64,
    LinuxMuslArm64,
    DarwinArm64,
    DarwinAmd64,
    WindowsAmd64,
}

/// The archive format a platform's packages use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArchiveKind {
    /// gzip-compressed tar, for unix platforms.
    TarGz,
    /// zip, for windows.
    Zip,
}

impl ArchiveKind {
    /// The file extension, without a leading dot.
    pub fn extension(self) -> &'static str {
        match self {
            ArchiveKind::TarGz => "tar.gz",
            ArchiveKind::Zip => "zip",
        }
    }
}

/// Why a platform string is invalid or the host's platform can't be told.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlatformError {
    #[error("unknown platform {0:?}; known platforms: {known}", known = Platform::known_names())]
    Unknown(String),
    #[error(
        "this host's platform is not supported (os {os}, arch {arch}); pass --platform with one of: {known}",
        known = Platform::known_names()
    )]
    UnsupportedHost { os: String, arch: String },
    #[error(
        "cannot tell whether this Linux host uses glibc or musl (no dynamic loader found under {root}); pass --platform"
    )]
    UndetectableLibc { root: String },
}

impl Platform {
    /// Every platform, in a fixed order.
    pub const ALL: [Platform; 7] = [
        Platform::LinuxAmd64,
        Platform::LinuxArm64,
        Platform::LinuxMuslAmd64,
        Platform::LinuxMuslArm64,
        Platform::DarwinArm64,
        Platform::DarwinAmd64,
        Platform::WindowsAmd64,
    ];

    /// The platform's name, e.g. `linux-musl-amd64`.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::LinuxAmd64 => "linux-amd64",
            Platform::LinuxArm64 => "linux-arm64",
            Platform::LinuxMuslAmd64 => "linux-musl-amd64",
            Platform::LinuxMuslArm64 => "linux-musl-arm64",
            Platform::DarwinArm64 => "darwin-arm64",
            Platform::DarwinAmd64 => "darwin-amd64",
            Platform::WindowsAmd64 => "windows-amd64",
        }
    }

    /// `.tar.gz` for unix platforms, `.zip` for windows.
    pub fn archive_kind(self) -> ArchiveKind {
        match self {
            Platform::WindowsAmd64 => ArchiveKind::Zip,
            _ => ArchiveKind::TarGz,
        }
    }

    /// True for platforms whose executables need the exec bit.
    pub fn is_unix(self) -> bool {
        self.archive_kind() == ArchiveKind::TarGz
    }

    fn known_names() -> String {
        Platform::ALL.map(Platform::as_str).join(", ")
    }

    /// Detects the running host. On Linux, the C library is told apart by the dynamic
    /// loader present under `/`.
    pub fn detect() -> Result<Platform, PlatformError> {
        Platform::detect_from(std::env::consts::OS, std::env::consts::ARCH, Path::new("/"))
    }

    /// Detection with the inputs passed in, for tests: `os` and `arch` as Rust names them
    /// (`std::env::consts`), and the file-system root to look for loaders under.
    pub fn detect_from(os: &str, arch: &str, root: &Path) -> Result<Platform, PlatformError> {
        let unsupported = || PlatformError::UnsupportedHost {
            os: os.to_owned(),
            arch: arch.to_owned(),
        };
        let amd64 = match arch {
            "x86_64" => true,
            "aarch64" => false,
            _ => return Err(unsupported()),
        };
        match os {
            "linux" => match detect_libc(root, amd64) {
                Some(Libc::Glibc) if amd64 => Ok(Platform::LinuxAmd64),
                Some(Libc::Glibc) => Ok(Platform::LinuxArm64),
                Some(Libc::Musl) if amd64 => Ok(Platform::LinuxMuslAmd64),
                Some(Libc::Musl) => Ok(Platform::LinuxMuslArm64),
                None => Err(PlatformError::UndetectableLibc {
                    root: root.display().to_string(),
                }),
            },
            "macos" if amd64 => Ok(Platform::DarwinAmd64),
            "macos" => Ok(Platform::DarwinArm64),
            "windows" if amd64 => Ok(Platform::WindowsAmd64),
            _ => Err(unsupported()),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Libc {
    Glibc,
    Musl,
}

/// Looks for the musl or glibc dynamic loader. musl wins when both exist: a musl
/// loader is never installed by default on a glibc distribution, but glibc compat
/// packages exist on musl ones (Alpine's `gcompat`).
fn detect_libc(root: &Path, amd64: bool) -> Option<Libc> {
    let (musl, glibc): (&[&str], &[&str]) = if amd64 {
        (
            &["lib/ld-musl-x86_64.so.1"],
            &[
                "lib64/ld-linux-x86-64.so.2",
                "lib/x86_64-linux-gnu/libc.so.6",
                "lib64/libc.so.6",
                "usr/lib64/libc.so.6",
                "usr/lib/x86_64-linux-gnu/libc.so.6",
            ],
        )
    } else {
        (
            &["lib/ld-musl-aarch64.so.1"],
            &[
                "lib/ld-linux-aarch64.so.1",
                "lib/aarch64-linux-gnu/libc.so.6",
                "lib64/libc.so.6",
                "usr/lib64/libc.so.6",
                "usr/lib/aarch64-linux-gnu/libc.so.6",
            ],
        )
    };
    let exists = |p: &&str| root.join(p).exists();
    if musl.iter().any(exists) {
        Some(Libc::Musl)
    } else if glibc.iter().any(exists) {
        Some(Libc::Glibc)
    } else {
        None
    }
}

impl FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| PlatformError::Unknown(s.to_owned()))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Platform {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Platform {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"").unwrap();
        }
        dir
    }

    #[test]
    fn names_round_trip_and_archive_kinds() {
        for p in Platform::ALL {
            assert_eq!(p.as_str().parse::<Platform>(), Ok(p));
            let want = if p == Platform::WindowsAmd64 {
                "zip"
            } else {
                "tar.gz"
            };
            assert_eq!(p.archive_kind().extension(), want);
        }
        assert!(matches!(
            "linux-x86_64".parse::<Platform>(),
            Err(PlatformError::Unknown(_))
        ));
        assert!(matches!(
            "windows".parse::<Platform>(),
            Err(PlatformError::Unknown(_))
        ));
    }

    #[test]
    fn detects_glibc_and_musl() {
        let glibc = fake_root(&["lib64/ld-linux-x86-64.so.2"]);
        assert_eq!(
            Platform::detect_from("linux", "x86_64", glibc.path()),
            Ok(Platform::LinuxAmd64)
        );
        let glibc_arm = fake_root(&["lib/ld-linux-aarch64.so.1"]);
        assert_eq!(
            Platform::detect_from("linux", "aarch64", glibc_arm.path()),
            Ok(Platform::LinuxArm64)
        );
        let musl = fake_root(&["lib/ld-musl-x86_64.so.1"]);
        assert_eq!(
            Platform::detect_from("linux", "x86_64", musl.path()),
            Ok(Platform::LinuxMuslAmd64)
        );
        let alpine_gcompat = fake_root(&["lib/ld-musl-aarch64.so.1", "lib/ld-linux-aarch64.so.1"]);
        assert_eq!(
            Platform::detect_from("linux", "aarch64", alpine_gcompat.path()),
            Ok(Platform::LinuxMuslArm64)
        );
    }

    #[test]
    fn unknown_hosts_are_errors_not_fallbacks() {
        let empty = fake_root(&[]);
        assert!(matches!(
            Platform::detect_from("linux", "x86_64", empty.path()),
            Err(PlatformError::UndetectableLibc { .. })
        ));
        assert!(matches!(
            Platform::detect_from("linux", "riscv64", empty.path()),
            Err(PlatformError::UnsupportedHost { .. })
        ));
        assert!(matches!(
            Platform::detect_from("freebsd", "x86_64", empty.path()),
            Err(PlatformError::UnsupportedHost { .. })
        ));
        assert!(matches!(
            Platform::detect_from("windows", "aarch64", empty.path()),
            Err(PlatformError::UnsupportedHost { .. })
        ));
        assert_eq!(
            Platform::detect_from("macos", "aarch64", empty.path()),
            Ok(Platform::DarwinArm64)
        );
    }

    #[test]
    fn this_host_is_detected() {
        // The machines that build and test molt are Linux with glibc or musl.
        Platform::detect().unwrap();
    }
}
