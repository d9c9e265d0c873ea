//! Reproducible packaging: the archives `release-manifest package` writes (SPEC §4).
//!
//! [`package`] writes, for one version and platform,
//! `OUT/molt-agent/<v>/molt-agent-<p>.<ext>` and `OUT/molt-updater/<v>/molt-updater-<p>.<ext>`
//! (the TUF target names of [`PackageName::target_name`]). Each archive holds exactly the
//! package's files ([`PackageName::files_for`]), in that order: `VERSION` (the version and a
//! newline) and the programs copied from the given binaries.
//!
//! The same inputs always give the same bytes, on any machine:
//! - tar (unix platforms): ustar headers, no directory entries, [`ARCHIVE_MTIME`], uid and gid 0,
//!   empty user and group names, mode [`PROGRAM_MODE`] for programs and [`DATA_MODE`] for data,
//!   then the end-of-archive blocks. gzip header without a file name, mtime 0, OS byte 255
//!   ("unknown"), deflate level [`COMPRESSION_LEVEL`].
//! - zip (windows): entries stamped 1980-01-01 00:00:00 (the earliest time zip can record),
//!   made by "unix" with the same modes, deflate level [`COMPRESSION_LEVEL`], sizes in the local
//!   headers (the archive is written to a seekable file, so no data descriptors).
//!
//! The bytes also depend on the compressor's version (flate2 with zlib-rs, pinned by
//! `Cargo.lock`); build releases with the locked dependencies.
//!
//! Archives are written to a temporary file in the destination directory, synced, and then
//! linked into place without replacing anything: an existing archive with the same bytes is
//! left alone (packaging again is a no-op), and one with different bytes is an error
//! ([`PackageError::ExistsDifferent`]), because a published target must never change.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

use molt_schema::artifact::{PackageName, Sha256};
use molt_schema::platform::{ArchiveKind, Platform};
use molt_schema::version::Version;

/// The modification time of every tar entry: the Unix epoch. (Zip entries use 1980-01-01
/// 00:00:00, zip's earliest time; the gzip header's mtime is 0, meaning "not recorded".)
pub const ARCHIVE_MTIME: u64 = 0;
/// The deflate level for both gzip and zip.
pub const COMPRESSION_LEVEL: u32 = 6;
/// The mode of programs (`bin/agent`, `bin/updater`).
pub const PROGRAM_MODE: u32 = 0o755;
/// The mode of data files (`VERSION`).
pub const DATA_MODE: u32 = 0o644;

/// One archive written by [`package`]. Serialised (snake_case keys) for `--json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PackagedArchive {
    #[serde(serialize_with = "serialize_display")]
    pub package: PackageName,
    pub platform: Platform,
    pub version: Version,
    /// The TUF target name, e.g. `molt-agent-1.4.0-linux-amd64.tar.gz`.
    pub target_name: String,
    /// Where the archive is: `<out_dir>/<package>/<version>/<file>`.
    pub path: PathBuf,
    /// Length in bytes.
    pub size: u64,
    pub sha256: Sha256,
    /// True when an identical archive was already there and nothing was written.
    pub already_present: bool,
}

fn serialize_display<T: fmt::Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// Why packaging failed. Each variant names the path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("input binary {path} cannot be read")]
    InputUnreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("input binary {path} is not a regular file")]
    InputNotAFile { path: PathBuf },
    #[error("input binary {path} changed while it was being packaged (it had {expected} bytes)")]
    InputChanged { path: PathBuf, expected: u64 },
    #[error("cannot create directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create temporary file {path}")]
    CreateTemp {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write archive {path}")]
    WriteArchive {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write zip archive {path}")]
    WriteZip {
        path: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },
    #[error("cannot sync {path} to disk")]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read back {path}")]
    ReadBack {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "refusing to overwrite {path}: it exists with different contents (sha256 {existing}, new {new}); \
         published archives never change, so build a new version, or remove the file if it was never published"
    )]
    ExistsDifferent {
        path: PathBuf,
        existing: Sha256,
        new: Sha256,
    },
    #[error("refusing to overwrite {path}: it exists and is not a regular file")]
    ExistsNotAFile { path: PathBuf },
    #[error("cannot move the new archive into place at {path}")]
    Install {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("package {package} lists a file {name:?} that the packager does not know how to fill")]
    UnknownPackageFile { package: PackageName, name: String },
}

/// Packages one build for one platform: writes the `molt-agent` and the `molt-updater`
/// archives under `out_dir` (see the module documentation) and returns them in that order.
///
/// `agent` and `updater` are the built programs (for windows, the `.exe` files); the
/// `molt-agent` archive holds both, the `molt-updater` archive only the updater. Both inputs
/// are checked before anything is written.
pub fn package(
    version: &Version,
    platform: Platform,
    agent: &Path,
    updater: &Path,
    out_dir: &Path,
) -> Result<Vec<PackagedArchive>, PackageError> {
    check_input(agent)?;
    check_input(updater)?;
    let inputs = Inputs { agent, updater };
    PackageName::ALL
        .into_iter()
        .map(|pkg| package_one(pkg, version, platform, &inputs, out_dir))
        .collect()
}

/// The programs a package is made of.
#[derive(Clone, Copy, Debug)]
struct Inputs<'a> {
    agent: &'a Path,
    updater: &'a Path,
}

/// Where one entry's bytes come from.
enum Content<'a> {
    Bytes(Vec<u8>),
    File(&'a Path),
}

struct Entry<'a> {
    name: String,
    mode: u32,
    content: Content<'a>,
}

fn entries<'a>(
    pkg: PackageName,
    version: &Version,
    platform: Platform,
    inputs: &Inputs<'a>,
) -> Result<Vec<Entry<'a>>, PackageError> {
    // `files()` and `files_for()` list the same files in the same order; `files()` gives the
    // platform-independent name that says what goes in it.
    pkg.files()
        .iter()
        .zip(pkg.files_for(platform))
        .map(|(file, (name, executable))| {
            let content = match file.path {
                "VERSION" => Content::Bytes(format!("{version}\n").into_bytes()),
                "bin/agent" => Content::File(inputs.agent),
                "bin/updater" => Content::File(inputs.updater),
                other => {
                    return Err(PackageError::UnknownPackageFile {
                        package: pkg,
                        name: other.to_owned(),
                    });
                }
            };
            let mode = if executable { PROGRAM_MODE } else { DATA_MODE };
            Ok(Entry {
                name,
                mode,
                content,
            })
        })
        .collect()
}

fn package_one(
    pkg: PackageName,
    version: &Version,
    platform: Platform,
    inputs: &Inputs<'_>,
    out_dir: &Path,
) -> Result<PackagedArchive, PackageError> {
    let entries = entries(pkg, version, platform, inputs)?;
    let target_name = pkg.target_name(version, platform);
    let file_name = pkg.file_name(platform);
    let dir = out_dir.join(pkg.as_str()).join(version.to_string());
    let path = dir.join(&file_name);
    fs::create_dir_all(&dir).map_err(|source| PackageError::CreateDir {
        path: dir.clone(),
        source,
    })?;

    let mut tmp = TempFile::create(&dir, &file_name)?;
    match platform.archive_kind() {
        ArchiveKind::TarGz => write_tar_gz(&mut tmp.file, &tmp.path, &entries)?,
        ArchiveKind::Zip => write_zip(&mut tmp.file, &tmp.path, &entries)?,
    }
    tmp.file.sync_all().map_err(|source| PackageError::Sync {
        path: tmp.path.clone(),
        source,
    })?;
    let (size, sha256) = hash_file(&tmp.path).map_err(|source| PackageError::ReadBack {
        path: tmp.path.clone(),
        source,
    })?;
    let already_present = install(tmp, &path, sha256)?;
    Ok(PackagedArchive {
        package: pkg,
        platform,
        version: version.clone(),
        target_name,
        path,
        size,
        sha256,
        already_present,
    })
}

/// An input must be a regular file (following symlinks). `stat` first, so that a FIFO is
/// refused instead of blocking the open.
fn check_input(path: &Path) -> Result<u64, PackageError> {
    let meta = fs::metadata(path).map_err(|source| PackageError::InputUnreadable {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(PackageError::InputNotAFile {
            path: path.to_owned(),
        });
    }
    Ok(meta.len())
}

/// Opens an input and returns it with its length, taken from the open handle.
fn open_input(path: &Path) -> Result<(File, u64), PackageError> {
    check_input(path)?;
    let unreadable = |source| PackageError::InputUnreadable {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(PackageError::InputNotAFile {
            path: path.to_owned(),
        });
    }
    Ok((file, meta.len()))
}

/// Reads exactly `expected` bytes of an input and records why it stopped early, so that
/// an input error is reported as one and not as a failure to write the archive.
struct InputReader<'a> {
    path: &'a Path,
    file: File,
    expected: u64,
    remaining: u64,
    failure: Option<PackageError>,
}

impl<'a> InputReader<'a> {
    fn open(path: &'a Path) -> Result<Self, PackageError> {
        let (file, expected) = open_input(path)?;
        Ok(InputReader {
            path,
            file,
            expected,
            remaining: expected,
            failure: None,
        })
    }

    fn changed(&self) -> PackageError {
        PackageError::InputChanged {
            path: self.path.to_owned(),
            expected: self.expected,
        }
    }

    /// Turns an error from copying this input into the archive into the right variant.
    fn blame(&mut self, archive: &Path, source: io::Error) -> PackageError {
        self.failure
            .take()
            .unwrap_or_else(|| PackageError::WriteArchive {
                path: archive.to_owned(),
                source,
            })
    }

    /// After the copy: the input must have been read to its end and not have grown.
    fn finish(mut self) -> Result<(), PackageError> {
        let mut byte = [0u8; 1];
        let grew = self
            .file
            .read(&mut byte)
            .map_err(|source| PackageError::InputUnreadable {
                path: self.path.to_owned(),
                source,
            })?;
        if self.remaining != 0 || grew != 0 {
            return Err(self.changed());
        }
        Ok(())
    }
}

impl Read for InputReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.remaining).map_or(buf.len(), |r| r.min(buf.len()));
        match self.file.read(&mut buf[..want]) {
            Ok(0) => {
                self.failure = Some(self.changed());
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "input binary shrank",
                ))
            }
            Ok(n) => {
                self.remaining -= n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let kind = e.kind();
                self.failure = Some(PackageError::InputUnreadable {
                    path: self.path.to_owned(),
                    source: e,
                });
                Err(io::Error::new(kind, "input binary unreadable"))
            }
        }
    }
}

fn write_tar_gz(file: &mut File, path: &Path, entries: &[Entry<'_>]) -> Result<(), PackageError> {
    let write_err = |source| PackageError::WriteArchive {
        path: path.to_owned(),
        source,
    };
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(&mut *file, flate2::Compression::new(COMPRESSION_LEVEL));
    let mut tar = tar::Builder::new(gz);
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        header.set_path(&entry.name).map_err(write_err)?;
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(entry.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(ARCHIVE_MTIME);
        header.set_username("").map_err(write_err)?;
        header.set_groupname("").map_err(write_err)?;
        match &entry.content {
            Content::Bytes(bytes) => {
                header.set_size(bytes.len() as u64);
                header.set_cksum();
                tar.append(&header, bytes.as_slice()).map_err(write_err)?;
            }
            Content::File(input) => {
                let mut reader = InputReader::open(input)?;
                header.set_size(reader.expected);
                header.set_cksum();
                if let Err(e) = tar.append(&header, &mut reader) {
                    return Err(reader.blame(path, e));
                }
                reader.finish()?;
            }
        }
    }
    let gz = tar.into_inner().map_err(write_err)?;
    gz.finish().map_err(write_err)?;
    Ok(())
}

fn write_zip(file: &mut File, path: &Path, entries: &[Entry<'_>]) -> Result<(), PackageError> {
    let zip_err = |source| PackageError::WriteZip {
        path: path.to_owned(),
        source,
    };
    // `&mut File` is seekable, so the writer goes back to fill in each local header's sizes
    // and CRC instead of writing data descriptors.
    let mut zip = zip::ZipWriter::new(&mut *file);
    for entry in entries {
        let (mut input, size) = match &entry.content {
            Content::Bytes(bytes) => (None, bytes.len() as u64),
            Content::File(input) => {
                let reader = InputReader::open(input)?;
                let size = reader.expected;
                (Some(reader), size)
            }
        };
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .compression_level(Some(i64::from(COMPRESSION_LEVEL)))
            .last_modified_time(zip::DateTime::default())
            .system(zip::System::Unix)
            .unix_permissions(entry.mode)
            .large_file(size >= zip::ZIP64_BYTES_THR);
        zip.start_file(entry.name.as_str(), options)
            .map_err(zip_err)?;
        match (&entry.content, input.as_mut()) {
            (Content::Bytes(bytes), _) => {
                zip.write_all(bytes)
                    .map_err(|source| PackageError::WriteArchive {
                        path: path.to_owned(),
                        source,
                    })?
            }
            (Content::File(_), Some(reader)) => {
                if let Err(e) = io::copy(reader, &mut zip) {
                    return Err(reader.blame(path, e));
                }
            }
            (Content::File(input), None) => {
                // Unreachable: `input` is `Some` exactly for `Content::File`. Report it as an
                // input error rather than panicking.
                return Err(PackageError::InputChanged {
                    path: (*input).to_owned(),
                    expected: size,
                });
            }
        }
        if let Some(reader) = input {
            reader.finish()?;
        }
    }
    zip.finish().map_err(zip_err)?;
    Ok(())
}

/// Length and SHA-256 of a file.
fn hash_file(path: &Path) -> io::Result<(u64, Sha256)> {
    molt_schema::artifact::hash_reader(File::open(path)?)
}

/// A temporary file beside the destination, removed on drop unless it was moved into place.
struct TempFile {
    path: PathBuf,
    file: File,
}

impl TempFile {
    fn create(dir: &Path, file_name: &str) -> Result<TempFile, PackageError> {
        let pid = std::process::id();
        let mut attempt = 0u32;
        loop {
            let path = dir.join(format!(".{file_name}.{pid}.{attempt}.tmp"));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok(TempFile { path, file }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(source) => return Err(PackageError::CreateTemp { path, source }),
            }
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Best effort: an error here leaves a dot-file that the next run ignores.
        let _ = fs::remove_file(&self.path);
    }
}

/// Puts the finished temporary file at `path` without ever replacing an existing file.
/// Returns true when `path` already held the same bytes (nothing was written).
fn install(tmp: TempFile, path: &Path, sha256: Sha256) -> Result<bool, PackageError> {
    // A hard link fails if `path` exists, so unlike a check followed by a rename it can't
    // replace an archive that appears in between. Some file systems have no hard links;
    // there, fall back to check-then-rename.
    let linked = match fs::hard_link(&tmp.path, path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(link_err) => match fs::symlink_metadata(path) {
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::rename(&tmp.path, path).map_err(|source| PackageError::Install {
                    path: path.to_owned(),
                    source,
                })?;
                true
            }
            Err(_) => {
                return Err(PackageError::Install {
                    path: path.to_owned(),
                    source: link_err,
                });
            }
        },
    };
    if linked {
        // Dropping `tmp` removes the temporary name (a no-op after the rename).
        drop(tmp);
        sync_parent(path)?;
        return Ok(false);
    }
    drop(tmp);
    let meta = fs::symlink_metadata(path).map_err(|source| PackageError::ReadBack {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(PackageError::ExistsNotAFile {
            path: path.to_owned(),
        });
    }
    let (_, existing) = hash_file(path).map_err(|source| PackageError::ReadBack {
        path: path.to_owned(),
        source,
    })?;
    if existing != sha256 {
        return Err(PackageError::ExistsDifferent {
            path: path.to_owned(),
            existing,
            new: sha256,
        });
    }
    Ok(true)
}

/// Makes a new directory entry durable (unix; elsewhere a no-op).
fn sync_parent(path: &Path) -> Result<(), PackageError> {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| PackageError::Sync {
                path: dir.to_owned(),
                source,
            })?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Fixture {
        _dir: tempfile::TempDir,
        agent: PathBuf,
        updater: PathBuf,
        root: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let agent = root.join("agent-bin");
        let updater = root.join("updater-bin");
        // Incompressible-ish, distinct contents so a swapped input would show.
        let agent_bytes: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(&agent, &agent_bytes).unwrap();
        fs::write(&updater, b"#!/bin/sh\necho updater\n").unwrap();
        Fixture {
            _dir: dir,
            agent,
            updater,
            root,
        }
    }

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    /// (name, mode, uid, gid, mtime, username, groupname, type, contents) of each entry.
    type TarRow = (String, u32, u64, u64, u64, Vec<u8>, Vec<u8>, u8, Vec<u8>);

    fn tar_rows(path: &Path) -> Vec<TarRow> {
        let gz = flate2::read::GzDecoder::new(File::open(path).unwrap());
        let mut archive = tar::Archive::new(gz);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (
                    String::from_utf8(h.path_bytes().into_owned()).unwrap(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.mtime().unwrap(),
                    h.username_bytes().unwrap().to_vec(),
                    h.groupname_bytes().unwrap().to_vec(),
                    h.entry_type().as_byte(),
                    data,
                )
            })
            .collect()
    }

    #[test]
    fn packaging_twice_gives_identical_bytes() {
        let f = fixture();
        for platform in [Platform::LinuxAmd64, Platform::WindowsAmd64] {
            let a = package(
                &v("1.4.0"),
                platform,
                &f.agent,
                &f.updater,
                &f.root.join("a"),
            )
            .unwrap();
            let b = package(
                &v("1.4.0"),
                platform,
                &f.agent,
                &f.updater,
                &f.root.join("b"),
            )
            .unwrap();
            assert_eq!(a.len(), 2);
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(fs::read(&x.path).unwrap(), fs::read(&y.path).unwrap());
                assert_eq!((x.size, x.sha256), (y.size, y.sha256));
                assert_eq!(x.sha256, Sha256::digest(&fs::read(&x.path).unwrap()));
                assert_eq!(x.size, fs::metadata(&x.path).unwrap().len());
                assert!(!x.already_present);
            }
        }
    }

    #[test]
    fn archives_land_at_their_target_names() {
        let f = fixture();
        let out = f.root.join("out");
        let got = package(
            &v("1.4.0"),
            Platform::LinuxMuslArm64,
            &f.agent,
            &f.updater,
            &out,
        )
        .unwrap();
        let names: Vec<_> = got.iter().map(|a| a.target_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "molt-agent-1.4.0-linux-musl-arm64.tar.gz",
                "molt-updater-1.4.0-linux-musl-arm64.tar.gz"
            ]
        );
        for a in &got {
            assert_eq!(
                a.path,
                out.join(a.package.dist_path(&a.version, a.platform))
            );
            assert_eq!(a.version, v("1.4.0"));
            assert_eq!(a.platform, Platform::LinuxMuslArm64);
        }
        // Nothing but the archives: no temporary files left behind.
        for pkg in ["molt-agent", "molt-updater"] {
            let listing: Vec<_> = fs::read_dir(out.join(pkg).join("1.4.0"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert_eq!(listing.len(), 1, "{listing:?}");
        }
    }

    #[test]
    fn tar_gz_holds_exactly_the_package_files() {
        let f = fixture();
        let got = package(
            &v("2.0.0-rc.1"),
            Platform::LinuxAmd64,
            &f.agent,
            &f.updater,
            &f.root.join("o"),
        )
        .unwrap();
        let agent_bytes = fs::read(&f.agent).unwrap();
        let updater_bytes = fs::read(&f.updater).unwrap();
        let row = |name: &str, mode, data: &[u8]| -> TarRow {
            (
                name.to_owned(),
                mode,
                0,
                0,
                0,
                vec![],
                vec![],
                b'0',
                data.to_vec(),
            )
        };
        assert_eq!(
            tar_rows(&got[0].path),
            vec![
                row("VERSION", 0o644, b"2.0.0-rc.1\n"),
                row("bin/agent", 0o755, &agent_bytes),
                row("bin/updater", 0o755, &updater_bytes),
            ]
        );
        assert_eq!(
            tar_rows(&got[1].path),
            vec![
                row("VERSION", 0o644, b"2.0.0-rc.1\n"),
                row("bin/updater", 0o755, &updater_bytes)
            ]
        );
        // gzip header: magic, deflate, no flags (no file name), mtime 0, OS "unknown".
        let bytes = fs::read(&got[0].path).unwrap();
        assert_eq!(&bytes[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&bytes[4..8], &[0, 0, 0, 0]);
        assert_eq!(bytes[9], 255);
    }

    #[test]
    fn windows_zip_holds_exe_files_with_modes() {
        let f = fixture();
        let got = package(
            &v("1.4.0"),
            Platform::WindowsAmd64,
            &f.agent,
            &f.updater,
            &f.root.join("o"),
        )
        .unwrap();
        assert_eq!(got[0].target_name, "molt-agent-1.4.0-windows-amd64.zip");
        let mut zip = zip::ZipArchive::new(File::open(&got[0].path).unwrap()).unwrap();
        let mut seen = BTreeMap::new();
        for i in 0..zip.len() {
            let mut e = zip.by_index(i).unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            assert_eq!(e.compression(), zip::CompressionMethod::Deflated);
            assert_eq!(e.last_modified(), Some(zip::DateTime::default()));
            seen.insert(
                e.name().unwrap().to_string(),
                (e.unix_mode().unwrap(), data),
            );
        }
        let want: BTreeMap<String, (u32, Vec<u8>)> = [
            ("VERSION".to_owned(), (0o100644, b"1.4.0\n".to_vec())),
            (
                "bin/agent.exe".to_owned(),
                (0o100755, fs::read(&f.agent).unwrap()),
            ),
            (
                "bin/updater.exe".to_owned(),
                (0o100755, fs::read(&f.updater).unwrap()),
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(seen, want);
        // First local header: general-purpose flags without bit 3 (data descriptor).
        let bytes = fs::read(&got[0].path).unwrap();
        assert_eq!(&bytes[..4], b"PK\x03\x04");
        assert_eq!(u16::from_le_bytes([bytes[6], bytes[7]]) & 0x0008, 0);
    }

    #[test]
    fn same_bytes_again_is_a_no_op_and_different_bytes_are_refused() {
        let f = fixture();
        let out = f.root.join("out");
        let first = package(
            &v("1.0.0"),
            Platform::LinuxAmd64,
            &f.agent,
            &f.updater,
            &out,
        )
        .unwrap();
        let again = package(
            &v("1.0.0"),
            Platform::LinuxAmd64,
            &f.agent,
            &f.updater,
            &out,
        )
        .unwrap();
        for (a, b) in first.iter().zip(&again) {
            assert!(b.already_present);
            assert_eq!((a.sha256, a.size), (b.sha256, b.size));
        }

        let before = fs::read(&first[0].path).unwrap();
        fs::write(&f.agent, b"a different build").unwrap();
        let err = package(
            &v("1.0.0"),
            Platform::LinuxAmd64,
            &f.agent,
            &f.updater,
            &out,
        )
        .unwrap_err();
        match &err {
            PackageError::ExistsDifferent {
                path,
                existing,
                new,
            } => {
                assert_eq!(path, &first[0].path);
                assert_eq!(*existing, first[0].sha256);
                assert_ne!(new, existing);
            }
            other => panic!("expected ExistsDifferent, got {other:?}"),
        }
        assert!(
            err.to_string()
                .contains(&first[0].path.display().to_string())
        );
        assert_eq!(
            fs::read(&first[0].path).unwrap(),
            before,
            "the existing archive is untouched"
        );
        let listing: Vec<_> = fs::read_dir(first[0].path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            listing.len(),
            1,
            "no temporary file is left behind: {listing:?}"
        );
    }

    #[test]
    fn missing_or_irregular_inputs_are_typed_errors() {
        let f = fixture();
        let out = f.root.join("out");
        let missing = f.root.join("nope");
        match package(
            &v("1.0.0"),
            Platform::LinuxAmd64,
            &missing,
            &f.updater,
            &out,
        ) {
            Err(PackageError::InputUnreadable { path, .. }) => assert_eq!(path, missing),
            other => panic!("expected InputUnreadable, got {other:?}"),
        }
        match package(&v("1.0.0"), Platform::LinuxAmd64, &f.agent, &f.root, &out) {
            Err(PackageError::InputNotAFile { path }) => assert_eq!(path, f.root),
            other => panic!("expected InputNotAFile, got {other:?}"),
        }
        assert!(!out.exists(), "nothing is written when an input is bad");
    }

    #[test]
    fn json_shape() {
        let f = fixture();
        let got = package(
            &v("1.4.0"),
            Platform::LinuxAmd64,
            &f.agent,
            &f.updater,
            &f.root.join("o"),
        )
        .unwrap();
        let json = serde_json::to_value(&got[1]).unwrap();
        assert_eq!(json["package"], "molt-updater");
        assert_eq!(json["platform"], "linux-amd64");
        assert_eq!(json["version"], "1.4.0");
        assert_eq!(json["target_name"], "molt-updater-1.4.0-linux-amd64.tar.gz");
        assert_eq!(json["sha256"], got[1].sha256.to_string());
        assert_eq!(json["size"], got[1].size);
        assert_eq!(json["already_present"], false);
    }
}
