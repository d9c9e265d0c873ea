//! Hostile archives, built at test time: tar.gz and zip files that a safe extractor must
//! refuse (path traversal, links, devices, duplicates, bombs, corrupt and truncated streams).
//!
//! The builders write raw headers where the `tar` and `zip` crates' writers would refuse
//! (`..` and absolute names go straight into the header's name field), and the byte-patching
//! helpers change a finished zip where its writer won't go (duplicate names, flags, sizes,
//! modes). The extractor refuses a zip whose local headers disagree with its central
//! directory, so a change meant to get past that check is made in both ([`set_u16_in_both`],
//! [`set_u32_in_both`]). Start from [`package_tar_members`] / [`package_zip_members`], the
//! well-formed contents of a package, and change one thing.

// Test support: failing to build a fixture is a failed test, so panicking is the right
// response here (as in `#[test]` code).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Cursor, Write};

use molt_schema::{PackageName, Platform};

/// The `VERSION` file of every fixture.
pub const VERSION: &[u8] = b"1.4.0\n";

/// The contents given to a package's program `name` (e.g. `bin/agent`), distinct per name.
pub fn program_contents(name: &str) -> Vec<u8> {
    let mut data = format!("#!/bin/sh\n# {name}\n").into_bytes();
    data.extend((0..4096u32).map(|i| (i % 251) as u8));
    data
}

// ---------------------------------------------------------------------------------------
// tar

/// A GNU tar header with `name` written byte for byte into the name field (no checks, so
/// `..` and absolute names go in as they are). `name` must fit in 100 bytes.
pub fn tar_header(name: &[u8], kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    let field = &mut header.as_old_mut().name;
    assert!(name.len() <= field.len(), "tar name too long: {name:?}");
    field.fill(0);
    field[..name.len()].copy_from_slice(name);
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    header
}

/// One tar member: a header and the data written after it (padded to 512 bytes).
#[derive(Clone, Debug)]
pub struct TarMember {
    pub header: tar::Header,
    pub data: Vec<u8>,
}

impl TarMember {
    /// A regular file with mode 0644.
    pub fn file(name: &str, data: impl Into<Vec<u8>>) -> Self {
        Self::raw(name.as_bytes(), tar::EntryType::Regular, 0o644, data)
    }

    /// A regular file with mode 0755.
    pub fn program(name: &str, data: impl Into<Vec<u8>>) -> Self {
        Self::raw(name.as_bytes(), tar::EntryType::Regular, 0o755, data)
    }

    /// Any entry, with any name bytes; the header's size is the data's length.
    pub fn raw(name: &[u8], kind: tar::EntryType, mode: u32, data: impl Into<Vec<u8>>) -> Self {
        let data = data.into();
        TarMember {
            header: tar_header(name, kind, mode, data.len() as u64),
            data,
        }
    }

    /// A directory entry.
    pub fn dir(name: &str) -> Self {
        Self::raw(
            name.as_bytes(),
            tar::EntryType::Directory,
            0o755,
            Vec::new(),
        )
    }

    /// A symbolic or hard link (`kind` Symlink or Link) to `target`, written raw.
    pub fn link(name: &str, kind: tar::EntryType, target: &[u8]) -> Self {
        let mut member = Self::raw(name.as_bytes(), kind, 0o777, Vec::new());
        let field = &mut member.header.as_old_mut().linkname;
        assert!(target.len() <= field.len());
        field[..target.len()].copy_from_slice(target);
        member.header.set_cksum();
        member
    }

    /// A character or block device (major 1, minor 3: /dev/null), a FIFO, or any other
    /// data-less type.
    pub fn special(name: &str, kind: tar::EntryType) -> Self {
        let mut member = Self::raw(name.as_bytes(), kind, 0o666, Vec::new());
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            member.header.set_device_major(1).unwrap();
            member.header.set_device_minor(3).unwrap();
            member.header.set_cksum();
        }
        member
    }

    /// Replaces the mode in the header.
    pub fn with_mode(mut self, mode: u32) -> Self {
        self.header.set_mode(mode);
        self.header.set_cksum();
        self
    }

    /// Makes the header declare `size` bytes, whatever the data is.
    pub fn declaring(mut self, size: u64) -> Self {
        self.header.set_size(size);
        self.header.set_cksum();
        self
    }
}

/// The members, each padded to whole blocks, without the end-of-archive blocks.
pub fn tar_without_end(members: &[TarMember]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        out.extend_from_slice(m.header.as_bytes());
        out.extend_from_slice(&m.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out
}

/// A complete tar stream: the members and two zero blocks.
pub fn tar(members: &[TarMember]) -> Vec<u8> {
    let mut out = tar_without_end(members);
    out.resize(out.len() + 1024, 0);
    out
}

/// gzip of `data` (no file name, mtime 0).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// A tar.gz of the members.
pub fn tar_gz(members: &[TarMember]) -> Vec<u8> {
    gzip(&tar(members))
}

/// The well-formed contents of `package`'s tar archive: `VERSION` and the programs.
pub fn package_tar_members(package: PackageName, platform: Platform) -> Vec<TarMember> {
    package
        .files_for(platform)
        .into_iter()
        .map(|(name, executable)| {
            if executable {
                TarMember::program(&name, program_contents(&name))
            } else {
                TarMember::file(&name, VERSION)
            }
        })
        .collect()
}

/// A gzip stream of `len` zero bytes, built without holding them in memory.
pub fn gzip_of_zeros(len: u64) -> Vec<u8> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::fast());
    let chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        gz.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    gz.finish().unwrap()
}

// ---------------------------------------------------------------------------------------
// zip

/// What a zip member is.
#[derive(Clone, Debug)]
pub enum ZipKind {
    /// A regular file with these permission bits.
    File { mode: u32 },
    /// A directory (the writer adds the trailing `/`).
    Dir,
    /// A symbolic link (mode 0o120777 in the central directory) whose data is the target.
    Symlink,
}

/// One zip member. Names are raw bytes: the writer takes anything but a duplicate.
#[derive(Clone, Debug)]
pub struct ZipMember {
    pub name: Vec<u8>,
    pub data: Vec<u8>,
    pub kind: ZipKind,
    pub deflate: bool,
}

impl ZipMember {
    /// A deflated regular file with mode 0644.
    pub fn file(name: &str, data: impl Into<Vec<u8>>) -> Self {
        Self::raw(name.as_bytes(), data).with_kind(ZipKind::File { mode: 0o644 })
    }

    /// A deflated regular file with mode 0755.
    pub fn program(name: &str, data: impl Into<Vec<u8>>) -> Self {
        Self::raw(name.as_bytes(), data).with_kind(ZipKind::File { mode: 0o755 })
    }

    /// A deflated regular file (0644) with any name bytes.
    pub fn raw(name: &[u8], data: impl Into<Vec<u8>>) -> Self {
        ZipMember {
            name: name.to_vec(),
            data: data.into(),
            kind: ZipKind::File { mode: 0o644 },
            deflate: true,
        }
    }

    /// A symbolic link to `target`.
    pub fn symlink(name: &str, target: &str) -> Self {
        Self::raw(name.as_bytes(), target).with_kind(ZipKind::Symlink)
    }

    pub fn with_kind(mut self, kind: ZipKind) -> Self {
        self.kind = kind;
        self
    }

    /// Stored (method 0) instead of deflated.
    pub fn stored(mut self) -> Self {
        self.deflate = false;
        self
    }
}

fn write_members<W: Write + std::io::Seek>(zip: &mut zip::ZipWriter<W>, members: &[ZipMember]) {
    for m in members {
        let method = if m.deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(method)
            .last_modified_time(zip::DateTime::default())
            .system(zip::System::Unix);
        match m.kind {
            ZipKind::File { mode } => {
                zip.start_file_with_options(options.unix_permissions(mode).name(&m.name))
                    .unwrap();
                zip.write_all(&m.data).unwrap();
            }
            ZipKind::Dir => zip
                .add_directory(String::from_utf8(m.name.clone()).unwrap(), options)
                .unwrap(),
            ZipKind::Symlink => zip
                .add_symlink(
                    String::from_utf8(m.name.clone()).unwrap(),
                    String::from_utf8(m.data.clone()).unwrap(),
                    options,
                )
                .unwrap(),
        }
    }
}

/// A zip of the members, written to a seekable buffer (sizes in the local headers).
pub fn zip(members: &[ZipMember]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    write_members(&mut zip, members);
    zip.finish().unwrap().into_inner()
}

/// A zip of the members written as a stream: every entry uses a data descriptor.
pub fn zip_streamed(members: &[ZipMember]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut zip = zip::ZipWriter::new_stream(&mut out);
        write_members(&mut zip, members);
        zip.finish().unwrap();
    }
    out
}

/// The well-formed contents of `package`'s zip archive.
pub fn package_zip_members(package: PackageName, platform: Platform) -> Vec<ZipMember> {
    package
        .files_for(platform)
        .into_iter()
        .map(|(name, executable)| {
            if executable {
                ZipMember::program(&name, program_contents(&name))
            } else {
                ZipMember::file(&name, VERSION)
            }
        })
        .collect()
}

const LOCAL_SIG: &[u8] = b"PK\x03\x04";
const CENTRAL_SIG: &[u8] = b"PK\x01\x02";

fn find_header(bytes: &[u8], sig: &[u8], name_at: usize, len_at: usize, name: &[u8]) -> usize {
    (0..bytes.len().saturating_sub(name_at))
        .find(|&i| {
            bytes[i..].starts_with(sig)
                && usize::from(u16::from_le_bytes([
                    bytes[i + len_at],
                    bytes[i + len_at + 1],
                ])) == name.len()
                && bytes[i + name_at..].starts_with(name)
        })
        .unwrap_or_else(|| panic!("no header for {name:?}"))
}

/// Offset of the local header of the entry `name`.
pub fn local_header(bytes: &[u8], name: &[u8]) -> usize {
    find_header(bytes, LOCAL_SIG, 30, 26, name)
}

/// Offset of the central directory header of the entry `name`.
pub fn central_header(bytes: &[u8], name: &[u8]) -> usize {
    find_header(bytes, CENTRAL_SIG, 46, 28, name)
}

/// Local header field offsets (from the signature).
pub mod local {
    pub const FLAGS: usize = 6;
    pub const METHOD: usize = 8;
    pub const CRC: usize = 14;
    pub const COMPRESSED_SIZE: usize = 18;
    pub const UNCOMPRESSED_SIZE: usize = 22;
    pub const NAME: usize = 30;
}

/// Central directory header field offsets (from the signature).
pub mod central {
    /// Two bytes: the zip version, then the host system (0 DOS, 3 unix).
    pub const VERSION_MADE_BY: usize = 4;
    pub const FLAGS: usize = 8;
    pub const METHOD: usize = 10;
    pub const CRC: usize = 16;
    pub const UNCOMPRESSED_SIZE: usize = 24;
    pub const EXTERNAL_ATTRIBUTES: usize = 38;
    pub const NAME: usize = 46;
}

pub fn set_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

pub fn set_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// Sets a 16-bit field of the entry `name` in its local header (`local_field`, from
/// [`local`]) and in its central directory header (`central_field`, from [`central`]), so
/// that the two still agree.
pub fn set_u16_in_both(
    bytes: &mut [u8],
    name: &[u8],
    local_field: usize,
    central_field: usize,
    value: u16,
) {
    let at = local_header(bytes, name);
    set_u16(bytes, at + local_field, value);
    let at = central_header(bytes, name);
    set_u16(bytes, at + central_field, value);
}

/// [`set_u16_in_both`] for a 32-bit field.
pub fn set_u32_in_both(
    bytes: &mut [u8],
    name: &[u8],
    local_field: usize,
    central_field: usize,
    value: u32,
) {
    let at = local_header(bytes, name);
    set_u32(bytes, at + local_field, value);
    let at = central_header(bytes, name);
    set_u32(bytes, at + central_field, value);
}

/// Replaces every occurrence of `from` with `to` (same length); returns how many.
pub fn replace_all(bytes: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut count = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            count += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    count
}
