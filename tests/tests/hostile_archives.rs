#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Every hostile archive in `molt_tests::hostile` goes through the updater's extractor, which
//! must refuse it with the specific error and leave nothing behind: the staging directory is
//! removed and nothing is written outside it (a sentinel directory beside it is unchanged,
//! and escape targets are not created). The few zip oddities the extractor accepts (data
//! descriptors, bytes after the end record) are tested to extract exactly the described files.

use std::fs;
use std::path::{Path, PathBuf};

use molt_archive::extract::{ExtractError, Extracted, Limits, extract};
use molt_schema::{PackageName, Platform};
use molt_tests::hostile::{
    self, TarMember, ZipKind, ZipMember, central, central_header, gzip, gzip_of_zeros, local,
    local_header, package_tar_members, package_zip_members, program_contents, replace_all, set_u16,
    set_u16_in_both, set_u32, set_u32_in_both, tar, tar_gz, tar_without_end, zip, zip_streamed,
};

const SENTINEL: &[u8] = b"the sentinel must not change\n";
const UNIX: Platform = Platform::LinuxAmd64;
const WINDOWS: Platform = Platform::WindowsAmd64;

/// A temporary directory holding a sentinel directory; the extractor's destination is a
/// sibling, `staging`, that doesn't exist yet.
struct Arena {
    tmp: tempfile::TempDir,
}

impl Arena {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("sentinel")).unwrap();
        fs::write(tmp.path().join("sentinel/keep"), SENTINEL).unwrap();
        Arena { tmp }
    }

    fn dest(&self) -> PathBuf {
        self.tmp.path().join("staging")
    }

    /// An absolute path outside the destination, for entries that try to escape to it.
    fn outside(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn run(
        &self,
        bytes: &[u8],
        platform: Platform,
        limits: &Limits,
    ) -> Result<Extracted, ExtractError> {
        extract(bytes, PackageName::Agent, platform, &self.dest(), limits)
    }

    /// Only the sentinel is left, unchanged.
    fn assert_untouched(&self) {
        let mut names: Vec<_> = fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["sentinel"],
            "only the sentinel may remain beside the staging directory"
        );
        let inside: Vec<_> = fs::read_dir(self.tmp.path().join("sentinel"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(inside, ["keep"]);
        let keep = self.tmp.path().join("sentinel/keep");
        assert!(fs::symlink_metadata(&keep).unwrap().file_type().is_file());
        assert_eq!(fs::read(&keep).unwrap(), SENTINEL);
    }
}

/// Runs `bytes` through the extractor into a fresh arena, asserts the error matches the
/// pattern, and that nothing was left behind.
macro_rules! refused {
    ($platform:expr, $limits:expr, $bytes:expr, $pattern:pat $(if $guard:expr)?) => {{
        let arena = Arena::new();
        let result = arena.run(&$bytes, $platform, &$limits);
        match &result {
            Err(e) => assert!(matches!(e, $pattern $(if $guard)?), "wrong error: {e:?} ({e})"),
            Ok(x) => panic!("hostile archive accepted: {x:?}"),
        }
        arena.assert_untouched();
        arena
    }};
    ($platform:expr, $bytes:expr, $pattern:pat $(if $guard:expr)?) => {
        refused!($platform, Limits::default(), $bytes, $pattern $(if $guard)?)
    };
}

fn good_tar() -> Vec<TarMember> {
    package_tar_members(PackageName::Agent, UNIX)
}

fn good_zip() -> Vec<ZipMember> {
    package_zip_members(PackageName::Agent, WINDOWS)
}

fn with_first<T: Clone>(first: T, rest: &[T]) -> Vec<T> {
    let mut all = vec![first];
    all.extend_from_slice(rest);
    all
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

// -------------------------------------------------------------------------------------------
// The well-formed fixtures extract, so every refusal below is caused by the one change made.

#[test]
fn well_formed_tar_gz_is_accepted() {
    let arena = Arena::new();
    let got = arena
        .run(&tar_gz(&good_tar()), UNIX, &Limits::default())
        .unwrap();
    assert_eq!(got.version.as_deref(), Some("1.4.0"));
    let names: Vec<_> = got.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["VERSION", "bin/agent", "bin/updater"]);
    assert_eq!(
        fs::read(arena.dest().join("bin/agent")).unwrap(),
        program_contents("bin/agent")
    );
    // With a directory entry for bin/ too.
    let arena = Arena::new();
    arena
        .run(
            &tar_gz(&with_first(TarMember::dir("bin/"), &good_tar())),
            UNIX,
            &Limits::default(),
        )
        .unwrap();
}

#[test]
fn well_formed_zip_is_accepted() {
    let arena = Arena::new();
    let got = arena
        .run(&zip(&good_zip()), WINDOWS, &Limits::default())
        .unwrap();
    let names: Vec<_> = got.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["VERSION", "bin/agent.exe", "bin/updater.exe"]);
    assert_eq!(
        fs::read(arena.dest().join("bin/updater.exe")).unwrap(),
        program_contents("bin/updater.exe")
    );
    let stored: Vec<_> = good_zip().into_iter().map(ZipMember::stored).collect();
    let arena = Arena::new();
    arena
        .run(&zip(&stored), WINDOWS, &Limits::default())
        .unwrap();
    let with_dir = with_first(
        ZipMember::raw(b"bin", Vec::new()).with_kind(ZipKind::Dir),
        &good_zip(),
    );
    let arena = Arena::new();
    arena
        .run(&zip(&with_dir), WINDOWS, &Limits::default())
        .unwrap();
}

// -------------------------------------------------------------------------------------------
// tar.gz: names

#[test]
fn tar_absolute_path() {
    let arena = Arena::new();
    let target = arena.outside("escaped");
    let evil = TarMember::file(target.to_str().unwrap(), "pwned");
    let bytes = tar_gz(&with_first(evil, &good_tar()));
    let result = arena.run(&bytes, UNIX, &Limits::default());
    let want = target.to_str().unwrap();
    assert!(
        matches!(&result, Err(ExtractError::AbsolutePath { name }) if name == want),
        "{result:?}"
    );
    assert!(!target.exists());
    arena.assert_untouched();
}

#[test]
fn tar_parent_traversal() {
    for name in ["../escaped", "bin/../../escaped", "..", "bin/.."] {
        let bytes = tar_gz(&with_first(TarMember::file(name, "pwned"), &good_tar()));
        refused!(UNIX, bytes, ExtractError::PathTraversal { name: n } if n == name);
    }
    // As a directory entry too.
    let bytes = tar_gz(&with_first(TarMember::dir("../"), &good_tar()));
    refused!(UNIX, bytes, ExtractError::PathTraversal { .. });
}

#[test]
fn tar_unsafe_names() {
    let bytes = tar_gz(&with_first(
        TarMember::file("..\\escaped", "pwned"),
        &good_tar(),
    ));
    refused!(UNIX, bytes, ExtractError::Backslash { .. });
    for name in ["./VERSION", "bin//agent", "bin/agent/", "bin/\x1b[2J"] {
        let bytes = tar_gz(&with_first(TarMember::program(name, "x"), &good_tar()));
        refused!(UNIX, bytes, ExtractError::UnsafeName { .. });
    }
    let bytes = tar_gz(&with_first(
        TarMember::raw(b"bin/\xffagent", tar::EntryType::Regular, 0o755, "x"),
        &good_tar(),
    ));
    refused!(UNIX, bytes, ExtractError::UnsafeName { .. });
}

// -------------------------------------------------------------------------------------------
// tar.gz: entry types

#[test]
fn tar_symlink() {
    let arena = Arena::new();
    let keep = arena.outside("sentinel/keep");
    // A link in place of a program, pointing at the sentinel; then a file written through it.
    let mut members = vec![TarMember::file("VERSION", hostile::VERSION)];
    members.push(TarMember::link(
        "bin/agent",
        tar::EntryType::Symlink,
        keep.to_str().unwrap().as_bytes(),
    ));
    members.push(TarMember::program("bin/agent", "overwrite the sentinel"));
    members.push(TarMember::program("bin/updater", "x"));
    let result = arena.run(&tar_gz(&members), UNIX, &Limits::default());
    assert!(
        matches!(&result, Err(ExtractError::Symlink { name, target }) if name == "bin/agent" && target == keep.to_str().unwrap()),
        "{result:?}"
    );
    arena.assert_untouched();

    // A directory symlink (bin -> the sentinel directory) and a file under it.
    let arena = Arena::new();
    let members = vec![
        TarMember::link("bin", tar::EntryType::Symlink, b"../sentinel"),
        TarMember::program("bin/keep", "pwned"),
    ];
    let result = arena.run(&tar_gz(&members), UNIX, &Limits::default());
    assert!(
        matches!(&result, Err(ExtractError::Symlink { name, .. }) if name == "bin"),
        "{result:?}"
    );
    arena.assert_untouched();
}

#[test]
fn tar_hard_link() {
    let members = with_first(
        TarMember::link("bin/agent", tar::EntryType::Link, b"../sentinel/keep"),
        &good_tar(),
    );
    refused!(UNIX, tar_gz(&members),
        ExtractError::HardLink { name, target } if name == "bin/agent" && target == "../sentinel/keep");
}

#[test]
fn tar_devices() {
    for kind in [tar::EntryType::Char, tar::EntryType::Block] {
        let members = with_first(TarMember::special("bin/agent", kind), &good_tar());
        refused!(UNIX, tar_gz(&members), ExtractError::Device { name } if name == "bin/agent");
    }
}

#[test]
fn tar_fifo() {
    let members = with_first(
        TarMember::special("bin/agent", tar::EntryType::Fifo),
        &good_tar(),
    );
    refused!(UNIX, tar_gz(&members), ExtractError::Fifo { name } if name == "bin/agent");
}

#[test]
fn tar_extension_headers_and_other_types() {
    let cases = [
        // pax global header (as `git archive` writes), pax local header, GNU long name whose
        // data is an escaping name, GNU long link, GNU sparse, contiguous, and a vendor type.
        TarMember::raw(
            b"pax_global_header",
            tar::EntryType::XGlobalHeader,
            0o644,
            "52 comment=x\n",
        ),
        TarMember::raw(
            b"PaxHeaders/bin/agent",
            tar::EntryType::XHeader,
            0o644,
            "27 path=../../escaped\n",
        ),
        TarMember::raw(
            b"././@LongLink",
            tar::EntryType::GNULongName,
            0o644,
            "../../escaped\0",
        ),
        TarMember::raw(
            b"././@LongLink",
            tar::EntryType::GNULongLink,
            0o644,
            "/etc/shadow\0",
        ),
        TarMember::raw(b"bin/agent", tar::EntryType::GNUSparse, 0o755, Vec::new()),
        TarMember::raw(b"bin/agent", tar::EntryType::Continuous, 0o755, "x"),
        TarMember::raw(b"bin/agent", tar::EntryType::new(b'Z'), 0o755, "x"),
    ];
    for evil in cases {
        let bytes = tar_gz(&with_first(evil, &good_tar()));
        refused!(UNIX, bytes, ExtractError::UnsupportedType { .. });
    }
}

#[test]
fn tar_directory_with_data() {
    let evil = TarMember::raw(b"bin/", tar::EntryType::Directory, 0o755, "hidden");
    refused!(
        UNIX,
        tar_gz(&with_first(evil, &good_tar())),
        ExtractError::UnsupportedType { .. }
    );
}

// -------------------------------------------------------------------------------------------
// tar.gz: contents

#[test]
fn tar_duplicate_entry() {
    let mut members = good_tar();
    members.push(TarMember::file("VERSION", "9.9.9\n"));
    refused!(UNIX, tar_gz(&members), ExtractError::Duplicate { name } if name == "VERSION");
    let mut members = good_tar();
    members.push(TarMember::program("bin/agent", "replaced"));
    refused!(UNIX, tar_gz(&members), ExtractError::Duplicate { name } if name == "bin/agent");
}

#[test]
fn tar_unknown_file() {
    for name in [
        "bin/evil",
        "VERSION.bak",
        "bin/agent.exe",
        "etc/cron.d/evil",
    ] {
        let mut members = good_tar();
        members.insert(1, TarMember::program(name, "x"));
        refused!(UNIX, tar_gz(&members), ExtractError::UnexpectedEntry { name: n, .. } if n == name);
    }
    // A directory that is not a parent of a known file.
    refused!(UNIX, tar_gz(&with_first(TarMember::dir("etc/"), &good_tar())),
        ExtractError::UnexpectedEntry { name, .. } if name == "etc");
    // The updater package does not hold bin/agent.
    let arena = Arena::new();
    let result = extract(
        &tar_gz(&good_tar())[..],
        PackageName::Updater,
        UNIX,
        &arena.dest(),
        &Limits::default(),
    );
    assert!(
        matches!(&result, Err(ExtractError::UnexpectedEntry { name, .. }) if name == "bin/agent"),
        "{result:?}"
    );
    arena.assert_untouched();
}

#[test]
fn tar_missing_known_file() {
    let mut members = good_tar();
    members.pop();
    refused!(UNIX, tar_gz(&members),
        ExtractError::Missing { missing } if missing == &["bin/updater".to_owned()]);
    refused!(UNIX, tar_gz(&[]),
        ExtractError::Missing { missing } if missing.len() == 3);
}

#[test]
fn tar_too_many_entries() {
    let limits = Limits {
        max_entries: 3,
        ..Limits::default()
    };
    let members = with_first(TarMember::dir("bin/"), &good_tar());
    refused!(
        UNIX,
        limits,
        tar_gz(&members),
        ExtractError::TooManyEntries { limit: 3 }
    );
}

#[test]
fn tar_oversized_file() {
    let limits = Limits {
        max_file_size: 4096,
        ..Limits::default()
    };
    let mut members = good_tar();
    members[1] = TarMember::program("bin/agent", vec![7u8; 4097]);
    refused!(UNIX, limits.clone(), tar_gz(&members),
        ExtractError::FileTooLarge { name, limit: 4096 } if name == "bin/agent");

    // A header declaring 1 TiB, with the archive ending right after it: refused on the
    // header, before any data is read (reading would find the stream truncated).
    let header = TarMember::program("bin/agent", Vec::new()).declaring(1 << 40);
    let bytes = gzip(header.header.as_bytes());
    refused!(UNIX, bytes, ExtractError::FileTooLarge { name, .. } if name == "bin/agent");
}

#[test]
fn tar_total_size_bomb() {
    // 2 × 3 MiB of zeros compress to a few KiB; the limits are set low instead of using GiBs.
    let limits = Limits {
        max_file_size: 4 << 20,
        max_total_size: 5 << 20,
        ..Limits::default()
    };
    let members = vec![
        TarMember::file("VERSION", hostile::VERSION),
        TarMember::program("bin/agent", vec![0u8; 3 << 20]),
        TarMember::program("bin/updater", vec![0u8; 3 << 20]),
    ];
    let bytes = tar_gz(&members);
    assert!(
        bytes.len() < 64 << 10,
        "the bomb is small: {} bytes",
        bytes.len()
    );
    refused!(UNIX, limits, bytes,
        ExtractError::TotalTooLarge { name, limit } if name == "bin/updater" && *limit == 5 << 20);
}

#[test]
fn tar_size_larger_than_data() {
    // bin/agent declares more than the stream holds: its data runs into the next members and
    // then the end of the stream.
    let mut members = good_tar();
    members[1] = members[1].clone().declaring(100_000);
    refused!(UNIX, tar_gz(&members),
        ExtractError::SizeMismatch { name, declared: 100_000 } if name == "bin/agent");
}

#[test]
fn tar_size_smaller_than_data() {
    // The rest of bin/agent's data is read as the next header, whose checksum fails.
    let mut members = good_tar();
    members[1] = members[1].clone().declaring(100);
    refused!(UNIX, tar_gz(&members), ExtractError::Corrupt { .. });
}

#[test]
fn tar_header_checksum_mismatch() {
    let mut members = good_tar();
    members[1].header.as_old_mut().name[0] = b'B'; // "Bin/agent", checksum not updated
    refused!(UNIX, tar_gz(&members), ExtractError::Corrupt { .. });
}

// -------------------------------------------------------------------------------------------
// tar.gz: the stream

#[test]
fn tar_truncated_gzip() {
    let bytes = tar_gz(&good_tar());
    for cut in [bytes.len() / 2, bytes.len() - 4, bytes.len() - 1, 12] {
        refused!(UNIX, &bytes[..cut], ExtractError::Corrupt { .. });
    }
}

#[test]
fn tar_corrupt_gzip_crc() {
    let bytes = tar_gz(&good_tar());
    let n = bytes.len();
    let mut bad_crc = bytes.clone();
    bad_crc[n - 8] ^= 0xff;
    refused!(UNIX, bad_crc, ExtractError::Corrupt { .. });
    let mut bad_len = bytes.clone();
    bad_len[n - 4] ^= 0x01;
    refused!(UNIX, bad_len, ExtractError::Corrupt { .. });
    let mut bad_data = bytes;
    bad_data[n / 2] ^= 0x55;
    refused!(UNIX, bad_data, ExtractError::Corrupt { .. });
}

#[test]
fn tar_trailing_garbage_after_gzip() {
    let mut bytes = tar_gz(&good_tar());
    bytes.extend_from_slice(b"trailing garbage");
    refused!(UNIX, bytes, ExtractError::TrailingData { after } if after.contains("gzip"));
    // A second gzip member, which `gzip -d` would decompress and append.
    let mut bytes = tar_gz(&good_tar());
    bytes.extend(tar_gz(&[TarMember::program("bin/evil", "x")]));
    refused!(UNIX, bytes, ExtractError::TrailingData { after } if after.contains("gzip"));
}

#[test]
fn tar_data_after_end_of_archive() {
    let mut raw = tar(&good_tar());
    raw.extend(std::iter::repeat_n(b'A', 512));
    refused!(UNIX, gzip(&raw), ExtractError::TrailingData { after } if after.contains("tar"));
    // A second archive appended after the first one's end.
    let mut raw = tar(&good_tar());
    raw.extend(tar(&[TarMember::program("bin/evil", "x")]));
    refused!(UNIX, gzip(&raw), ExtractError::TrailingData { after } if after.contains("tar"));
    // Zero padding, as tar's 10 KiB records have, is fine...
    let mut raw = tar(&good_tar());
    raw.resize(raw.len().div_ceil(10240) * 10240, 0);
    Arena::new()
        .run(&gzip(&raw), UNIX, &Limits::default())
        .unwrap();
    // ...but not a gigabyte of it (here: 8 MiB, streaming from a small gzip).
    let mut raw = tar(&good_tar());
    raw.resize(raw.len() + (8 << 20), 0);
    refused!(UNIX, gzip(&raw), ExtractError::TrailingData { .. });
}

#[test]
fn tar_without_end_of_archive_blocks() {
    refused!(
        UNIX,
        gzip(&tar_without_end(&good_tar())),
        ExtractError::NoEndOfArchive
    );
    let mut one_block = tar_without_end(&good_tar());
    one_block.resize(one_block.len() + 512, 0);
    refused!(UNIX, gzip(&one_block), ExtractError::NoEndOfArchive);
}

#[test]
fn gzip_bomb_of_zeros_is_not_a_tar() {
    // 16 MiB of zeros: the tar reader sees an end-of-archive block at once and the rest is
    // padding beyond what is allowed; with nothing extracted it would be incomplete anyway.
    refused!(
        UNIX,
        gzip_of_zeros(16 << 20),
        ExtractError::TrailingData { .. }
    );
}

// -------------------------------------------------------------------------------------------
// tar.gz: modes

#[test]
fn tar_modes_are_normalised() {
    let members = vec![
        TarMember::file("VERSION", hostile::VERSION).with_mode(0o666),
        TarMember::program("bin/agent", "a").with_mode(0o6777),
        TarMember::program("bin/updater", "u").with_mode(0o1100),
    ];
    let arena = Arena::new();
    let got = arena
        .run(&tar_gz(&members), UNIX, &Limits::default())
        .unwrap();
    let dest = arena.dest();
    assert_eq!(mode(&dest.join("VERSION")), 0o644);
    assert_eq!(mode(&dest.join("bin/agent")), 0o755);
    assert_eq!(mode(&dest.join("bin/updater")), 0o755);
    let exec: Vec<_> = got.files.iter().map(|f| f.executable).collect();
    assert_eq!(exec, [false, true, true]);
    // A program without exec bits in the archive is written 0644.
    let members = vec![
        TarMember::file("VERSION", hostile::VERSION),
        TarMember::file("bin/agent", "a"),
        TarMember::program("bin/updater", "u"),
    ];
    let arena = Arena::new();
    arena
        .run(&tar_gz(&members), UNIX, &Limits::default())
        .unwrap();
    assert_eq!(mode(&arena.dest().join("bin/agent")), 0o644);
}

// -------------------------------------------------------------------------------------------
// zip: names

#[test]
fn zip_parent_traversal() {
    for name in ["../escaped", "bin/../../escaped"] {
        let bytes = zip(&with_first(
            ZipMember::raw(name.as_bytes(), "pwned"),
            &good_zip(),
        ));
        refused!(WINDOWS, bytes, ExtractError::PathTraversal { name: n } if n == name);
    }
}

#[test]
fn zip_absolute_path() {
    let arena = Arena::new();
    let target = arena.outside("escaped");
    let want = target.to_str().unwrap();
    let bytes = zip(&with_first(
        ZipMember::raw(want.as_bytes(), "pwned"),
        &good_zip(),
    ));
    let result = arena.run(&bytes, WINDOWS, &Limits::default());
    assert!(
        matches!(&result, Err(ExtractError::AbsolutePath { name }) if name == want),
        "{result:?}"
    );
    assert!(!target.exists());
    arena.assert_untouched();
    // A drive letter is absolute on windows.
    let bytes = zip(&with_first(
        ZipMember::raw(b"C:/Windows/evil.exe", "pwned"),
        &good_zip(),
    ));
    refused!(WINDOWS, bytes, ExtractError::AbsolutePath { .. });
}

#[test]
fn zip_backslash_and_nul() {
    let bytes = zip(&with_first(
        ZipMember::raw(b"..\\escaped", "pwned"),
        &good_zip(),
    ));
    refused!(WINDOWS, bytes, ExtractError::Backslash { .. });
    let bytes = zip(&with_first(
        ZipMember::raw(b"VERSION\0.txt", "pwned"),
        &good_zip(),
    ));
    refused!(WINDOWS, bytes, ExtractError::NulByte { .. });
}

// -------------------------------------------------------------------------------------------
// zip: entry types (from the central directory's unix mode)

#[test]
fn zip_symlink() {
    let arena = Arena::new();
    let keep = arena.outside("sentinel/keep");
    let mut members = good_zip();
    members[1] = ZipMember::symlink("bin/agent.exe", keep.to_str().unwrap());
    let result = arena.run(&zip(&members), WINDOWS, &Limits::default());
    let want = keep.to_str().unwrap();
    assert!(
        matches!(&result, Err(ExtractError::Symlink { name, target }) if name == "bin/agent.exe" && target == want),
        "{result:?}"
    );
    arena.assert_untouched();

    // The same, with the link mode (0o120777) patched into a plain file's directory entry.
    let mut bytes = zip(&good_zip());
    let at = central_header(&bytes, b"bin/updater.exe");
    set_u32(
        &mut bytes,
        at + central::EXTERNAL_ATTRIBUTES,
        0o120_777 << 16,
    );
    refused!(WINDOWS, bytes, ExtractError::Symlink { name, .. } if name == "bin/updater.exe");
}

#[test]
fn zip_devices_and_fifos() {
    for (mode, want_device) in [(0o020_644u32, true), (0o060_644, true), (0o010_644, false)] {
        let mut bytes = zip(&good_zip());
        let at = central_header(&bytes, b"VERSION");
        set_u32(&mut bytes, at + central::EXTERNAL_ATTRIBUTES, mode << 16);
        let arena = Arena::new();
        let result = arena.run(&bytes, WINDOWS, &Limits::default());
        if want_device {
            assert!(
                matches!(&result, Err(ExtractError::Device { name }) if name == "VERSION"),
                "{result:?}"
            );
        } else {
            assert!(
                matches!(&result, Err(ExtractError::Fifo { name }) if name == "VERSION"),
                "{result:?}"
            );
        }
        arena.assert_untouched();
    }
    // A socket, and a directory mode on a file name.
    for mode in [0o140_644u32, 0o040_755] {
        let mut bytes = zip(&good_zip());
        let at = central_header(&bytes, b"VERSION");
        set_u32(&mut bytes, at + central::EXTERNAL_ATTRIBUTES, mode << 16);
        refused!(WINDOWS, bytes, ExtractError::UnsupportedType { name, .. } if name == "VERSION");
    }
}

// -------------------------------------------------------------------------------------------
// zip: contents

#[test]
fn zip_duplicate_entry() {
    // The writer refuses duplicate names, so write "VERSIoN" and patch it. (The zip crate
    // keys entries by name: it knows that a name repeats, not which.)
    let mut members = good_zip();
    members.push(ZipMember::file("VERSIoN", "9.9.9\n"));
    let mut bytes = zip(&members);
    assert_eq!(replace_all(&mut bytes, b"VERSIoN", b"VERSION"), 2);
    refused!(WINDOWS, bytes, ExtractError::ZipDuplicateName);
    // Right after the first one, and for a program.
    let mut members = good_zip();
    members.insert(2, ZipMember::program("bin/agenT.exe", "replaced"));
    let mut bytes = zip(&members);
    assert_eq!(
        replace_all(&mut bytes, b"bin/agenT.exe", b"bin/agent.exe"),
        2
    );
    refused!(WINDOWS, bytes, ExtractError::ZipDuplicateName);
}

#[test]
fn zip_unknown_file() {
    for name in ["bin/evil.exe", "bin/agent", "VERSION.txt"] {
        let mut members = good_zip();
        members.insert(1, ZipMember::program(name, "x"));
        refused!(WINDOWS, zip(&members), ExtractError::UnexpectedEntry { name: n, .. } if n == name);
    }
}

#[test]
fn zip_missing_known_file() {
    let mut members = good_zip();
    members.remove(1);
    refused!(WINDOWS, zip(&members),
        ExtractError::Missing { missing } if missing == &["bin/agent.exe".to_owned()]);
}

#[test]
fn zip_too_many_entries() {
    let limits = Limits {
        max_entries: 2,
        ..Limits::default()
    };
    refused!(
        WINDOWS,
        limits,
        zip(&good_zip()),
        ExtractError::TooManyEntries { limit: 2 }
    );
}

#[test]
fn zip_size_lying_in_header() {
    // 1 MiB of data whose headers say 10 bytes: stopped once more than that comes out.
    let mut members = good_zip();
    members[1] = ZipMember::program("bin/agent.exe", program_contents("x").repeat(256));
    let mut bytes = zip(&members);
    set_u32_in_both(
        &mut bytes,
        b"bin/agent.exe",
        local::UNCOMPRESSED_SIZE,
        central::UNCOMPRESSED_SIZE,
        10,
    );
    refused!(WINDOWS, bytes, ExtractError::SizeMismatch { name, declared: 10 } if name == "bin/agent.exe");
    // Stored data whose headers claim more than there is: the entry ends short.
    let stored: Vec<_> = good_zip().into_iter().map(ZipMember::stored).collect();
    let mut bytes = zip(&stored);
    let real = program_contents("bin/updater.exe").len() as u32;
    set_u32_in_both(
        &mut bytes,
        b"bin/updater.exe",
        local::UNCOMPRESSED_SIZE,
        central::UNCOMPRESSED_SIZE,
        real + 1,
    );
    refused!(WINDOWS, bytes,
        ExtractError::SizeMismatch { name, declared } if name == "bin/updater.exe" && *declared == u64::from(real) + 1);
    // Lying in the local header only is an inconsistency, found before anything is read.
    let mut bytes = zip(&members);
    let at = local_header(&bytes, b"bin/agent.exe");
    set_u32(&mut bytes, at + local::UNCOMPRESSED_SIZE, 10);
    refused!(WINDOWS, bytes, ExtractError::ZipInconsistent { .. });
}

#[test]
fn zip_bombs() {
    // 16 MiB of zeros deflate to a few KiB.
    let limits = Limits {
        max_file_size: 1 << 20,
        ..Limits::default()
    };
    let mut members = good_zip();
    members[1] = ZipMember::program("bin/agent.exe", vec![0u8; 16 << 20]);
    let honest = zip(&members);
    assert!(
        honest.len() < 64 << 10,
        "the bomb is small: {} bytes",
        honest.len()
    );
    refused!(WINDOWS, limits.clone(), honest.clone(),
        ExtractError::FileTooLarge { name, limit } if name == "bin/agent.exe" && *limit == 1 << 20);
    // Declaring 1000 bytes: stopped as soon as more comes out.
    let mut lying = honest;
    set_u32_in_both(
        &mut lying,
        b"bin/agent.exe",
        local::UNCOMPRESSED_SIZE,
        central::UNCOMPRESSED_SIZE,
        1000,
    );
    refused!(
        WINDOWS,
        limits,
        lying,
        ExtractError::SizeMismatch { declared: 1000, .. }
    );
}

#[test]
fn zip_crc_mismatch() {
    let members: Vec<_> = good_zip().into_iter().map(ZipMember::stored).collect();
    let mut bytes = zip(&members);
    assert_eq!(replace_all(&mut bytes, b"1.4.0\n", b"6.6.6\n"), 1);
    refused!(WINDOWS, bytes, ExtractError::ChecksumMismatch { name } if name == "VERSION");
}

// -------------------------------------------------------------------------------------------
// zip: the stream

#[test]
fn zip_truncated() {
    let bytes = zip(&good_zip());
    for cut in [bytes.len() / 2, bytes.len() - 22, bytes.len() - 1, 10] {
        refused!(WINDOWS, &bytes[..cut], ExtractError::Corrupt { .. });
    }
    let members: Vec<_> = good_zip().into_iter().map(ZipMember::stored).collect();
    let bytes = zip(&members);
    let at = local_header(&bytes, b"bin/agent.exe");
    refused!(
        WINDOWS,
        &bytes[..at + 30 + 13 + 100],
        ExtractError::Corrupt { .. }
    );
}

#[test]
fn zip_trailing_garbage() {
    // The zip crate finds the end of central directory record before bytes that follow it
    // and ignores them: the archive it describes is extracted, and nothing else.
    let mut bytes = zip(&good_zip());
    bytes.extend_from_slice(b"trailing garbage");
    let arena = Arena::new();
    let got = arena.run(&bytes, WINDOWS, &Limits::default()).unwrap();
    let names: Vec<_> = got.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["VERSION", "bin/agent.exe", "bin/updater.exe"]);
    let mut listing: Vec<_> = fs::read_dir(arena.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listing.sort();
    assert_eq!(listing, ["sentinel", "staging"]);
    fs::remove_dir_all(arena.dest()).unwrap();
    arena.assert_untouched();
    // A second archive appended: its directory is the one found, and the first archive's
    // local headers, listed in no directory, make it inconsistent.
    let mut bytes = zip(&good_zip());
    bytes.extend(zip(&[ZipMember::program("bin/evil.exe", "x")]));
    refused!(WINDOWS, bytes, ExtractError::ZipInconsistent { .. });
}

#[test]
fn zip_data_descriptor_is_accepted() {
    // Written as a stream, every entry's sizes and CRC follow its data; read from the
    // spooled file, the central directory gives them.
    let bytes = zip_streamed(&good_zip());
    let at = local_header(&bytes, b"VERSION");
    assert_eq!(
        bytes[at + local::FLAGS] & 0x08,
        0x08,
        "a data descriptor is used"
    );
    let arena = Arena::new();
    let got = arena.run(&bytes, WINDOWS, &Limits::default()).unwrap();
    let names: Vec<_> = got.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["VERSION", "bin/agent.exe", "bin/updater.exe"]);
    assert_eq!(got.version.as_deref(), Some("1.4.0"));
    assert_eq!(
        fs::read(arena.dest().join("bin/agent.exe")).unwrap(),
        program_contents("bin/agent.exe")
    );
    assert_eq!(mode(&arena.dest().join("bin/agent.exe")), 0o755);
}

#[test]
fn zip_encrypted() {
    let mut bytes = zip(&good_zip());
    set_u16_in_both(
        &mut bytes,
        b"bin/agent.exe",
        local::FLAGS,
        central::FLAGS,
        0x0001,
    );
    refused!(WINDOWS, bytes, ExtractError::ZipEncrypted { name } if name == "bin/agent.exe");
}

#[test]
fn zip_unsupported_compression() {
    let mut bytes = zip(&good_zip());
    set_u16_in_both(&mut bytes, b"VERSION", local::METHOD, central::METHOD, 12); // bzip2
    refused!(WINDOWS, bytes, ExtractError::ZipCompression { name, method: 12 } if name == "VERSION");
}

#[test]
fn zip_central_directory_disagrees() {
    // The central directory names another file than the local header (a streaming reader
    // would see a different archive).
    let mut bytes = zip(&good_zip());
    let at = central_header(&bytes, b"VERSION");
    bytes[at + central::NAME + 6] = b'n';
    refused!(WINDOWS, bytes, ExtractError::ZipInconsistent { .. });
    // ...or flags an entry as encrypted that the local header doesn't, or the other way round.
    let mut bytes = zip(&good_zip());
    let at = central_header(&bytes, b"VERSION");
    set_u16(&mut bytes, at + central::FLAGS, 0x0001);
    refused!(WINDOWS, bytes, ExtractError::ZipInconsistent { .. });
    let mut bytes = zip(&good_zip());
    let at = local_header(&bytes, b"bin/agent.exe");
    set_u16(&mut bytes, at + local::FLAGS, 0x0001);
    refused!(WINDOWS, bytes, ExtractError::ZipInconsistent { .. });
    // ...or gives another CRC.
    let mut bytes = zip(&good_zip());
    let at = central_header(&bytes, b"VERSION");
    bytes[at + central::CRC] ^= 1;
    refused!(WINDOWS, bytes, ExtractError::ZipInconsistent { .. });
    // ...or another method.
    let stored: Vec<_> = good_zip().into_iter().map(ZipMember::stored).collect();
    let mut bytes = zip(&stored);
    let at = local_header(&bytes, b"VERSION");
    set_u16(&mut bytes, at + local::METHOD, 8);
    refused!(WINDOWS, bytes, ExtractError::ZipInconsistent { .. });
}

#[test]
fn zip_modes_come_from_the_central_directory() {
    let members = vec![
        ZipMember::file("VERSION", hostile::VERSION).with_kind(ZipKind::File { mode: 0o666 }),
        ZipMember::program("bin/agent.exe", "a").with_kind(ZipKind::File { mode: 0o777 }),
        ZipMember::file("bin/updater.exe", "u"),
    ];
    let mut bytes = zip(&members);
    // setuid/setgid bits can only be patched in (the writer masks them off).
    let at = central_header(&bytes, b"bin/agent.exe");
    set_u32(
        &mut bytes,
        at + central::EXTERNAL_ATTRIBUTES,
        0o106_777 << 16,
    );
    let arena = Arena::new();
    let got = arena.run(&bytes, WINDOWS, &Limits::default()).unwrap();
    let dest = arena.dest();
    assert_eq!(mode(&dest.join("VERSION")), 0o644);
    assert_eq!(mode(&dest.join("bin/agent.exe")), 0o755);
    assert_eq!(mode(&dest.join("bin/updater.exe")), 0o644);
    let exec: Vec<_> = got.files.iter().map(|f| f.executable).collect();
    assert_eq!(exec, [false, true, false]);
}

#[test]
fn zip_without_unix_modes_uses_the_package_exec_bits() {
    // Made on DOS (host 0) with no attributes: the package says which files are programs.
    let members = vec![
        ZipMember::program("VERSION", hostile::VERSION),
        ZipMember::file("bin/agent.exe", "a"),
        ZipMember::file("bin/updater.exe", "u"),
    ];
    let mut bytes = zip(&members);
    for name in [&b"VERSION"[..], b"bin/agent.exe", b"bin/updater.exe"] {
        let at = central_header(&bytes, name);
        bytes[at + central::VERSION_MADE_BY + 1] = 0;
        set_u32(&mut bytes, at + central::EXTERNAL_ATTRIBUTES, 0x20);
    }
    let arena = Arena::new();
    let got = arena.run(&bytes, WINDOWS, &Limits::default()).unwrap();
    let exec: Vec<_> = got.files.iter().map(|f| f.executable).collect();
    assert_eq!(exec, [false, true, true]);
    assert_eq!(mode(&arena.dest().join("VERSION")), 0o644);
    assert_eq!(mode(&arena.dest().join("bin/agent.exe")), 0o755);
}

#[test]
fn zip_archive_too_large() {
    // A zip is kept in a temporary file while it is read; more than the total limit is
    // refused as it arrives.
    let bytes = zip(&good_zip());
    let limits = Limits {
        max_total_size: bytes.len() as u64 - 1,
        ..Limits::default()
    };
    let limit = limits.max_total_size;
    refused!(WINDOWS, limits, bytes, ExtractError::ArchiveTooLarge { limit: l } if *l == limit);
    // An endless stream is stopped at the limit.
    let arena = Arena::new();
    let limits = Limits {
        max_total_size: 1 << 20,
        ..Limits::default()
    };
    let result = extract(
        std::io::repeat(b'P'),
        PackageName::Agent,
        WINDOWS,
        &arena.dest(),
        &limits,
    );
    assert!(
        matches!(result, Err(ExtractError::ArchiveTooLarge { limit }) if limit == 1 << 20),
        "{result:?}"
    );
    arena.assert_untouched();
}

#[test]
fn zip_is_not_a_tar_and_back() {
    refused!(UNIX, zip(&good_zip()), ExtractError::Corrupt { .. });
    refused!(WINDOWS, tar_gz(&good_tar()), ExtractError::Corrupt { .. });
}

/// `release-manifest add` runs the hosts' extractor before it signs: an archive every host
/// would refuse is refused here, with the extractor's reason, and the repository is left as
/// it was. (Hostile archives were signed without a look inside: traversal, links, devices,
/// duplicates, extra and missing files.) A well-formed archive of the same version still goes
/// in afterwards.
#[test]
fn the_release_tool_signs_nothing_a_host_would_refuse() {
    use molt_schema::manifest::Status;
    let repo = molt_tests::fixture::TestRepo::new("us-east-1");
    repo.publish("1.0.0", Status::Active);
    let metadata = |repo: &molt_tests::fixture::TestRepo| -> Vec<(String, Vec<u8>)> {
        let mut all: Vec<(String, Vec<u8>)> = fs::read_dir(repo.path().join("metadata"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        all.sort();
        all
    };
    let before = metadata(&repo);
    let good = package_tar_members(PackageName::Agent, UNIX);
    let with = |extra: TarMember| {
        let mut m = good.clone();
        m.push(extra);
        tar_gz(&m)
    };
    let replacing = |name: &str, by: TarMember| {
        let mut m = good.clone();
        for member in &mut m {
            if *member.header.path_bytes() == *name.as_bytes() {
                *member = by.clone();
            }
        }
        tar_gz(&m)
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a path out of the directory",
            with(TarMember::file("../escape", "x")),
            "escape",
        ),
        (
            "an absolute path",
            with(TarMember::file("/tmp/molt-evil", "x")),
            "molt-evil",
        ),
        (
            "a symlink for the agent",
            replacing(
                "bin/agent",
                TarMember::link("bin/agent", tar::EntryType::Symlink, b"/bin/sh"),
            ),
            "bin/agent",
        ),
        (
            "a hard link",
            with(TarMember::link(
                "bin/other",
                tar::EntryType::Link,
                b"bin/agent",
            )),
            "bin/other",
        ),
        (
            "a device",
            with(TarMember::special("bin/null", tar::EntryType::Char)),
            "bin/null",
        ),
        ("a duplicate", with(good[0].clone()), ""),
        (
            "an extra file",
            with(TarMember::file("README", "x")),
            "README",
        ),
        ("a missing file", tar_gz(&good[1..]), ""),
        ("not an archive", b"this is no gzip stream".to_vec(), ""),
    ];
    let dist = tempfile::tempdir().unwrap();
    let archive = dist
        .path()
        .join("molt-agent/1.4.0")
        .join(PackageName::Agent.file_name(UNIX));
    fs::create_dir_all(archive.parent().unwrap()).unwrap();
    let add = || {
        std::process::Command::new(molt_tests::fixture::workspace_bin("release-manifest"))
            .arg("add")
            .arg("--repo")
            .arg(repo.path())
            .arg("--dist")
            .arg(dist.path())
            .args(["--version", "1.4.0", "--keys"])
            .arg(repo.dir.path().join("keys"))
            .output()
            .unwrap()
    };
    for (what, bytes, named) in cases {
        fs::write(&archive, bytes).unwrap();
        let out = add();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {said}");
        assert!(
            said.contains("would be refused by every host, so it is not signed"),
            "{what}: {said}"
        );
        assert!(said.contains(named), "{what}: {said}");
        assert!(metadata(&repo) == before, "{what}: the repository changed");
        assert!(!Path::new("/tmp/molt-evil").exists(), "{what}");
    }
    fs::write(&archive, tar_gz(&good)).unwrap();
    let out = add();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(metadata(&repo) != before);
}
