//! The safe extractor (`molt_archive::extract`, what the updater stages packages with)
//! on arbitrary archives.
//!
//! The first byte chooses how the rest is used:
//!
//! - bits 0–1: `0` raw tar, whose header checksums the target fixes, gzip'd by the target (so
//!   the fuzzer explores tar headers, not deflate streams or checksums); `1` raw tar as it is,
//!   gzip'd by the target; `2` a tar.gz as it is; `3` a zip as it is (the windows package);
//! - bit 2: the package, `molt-agent` or `molt-updater`;
//! - bit 3: the default limits, or tight ones (4 entries, 64 bytes a file, 512 bytes in all,
//!   which also bounds a zip archive's own size).
//!
//! Each run extracts into `staging` in a fresh directory `<tmp>/a/b/`, with a sentinel file
//! beside it. Whatever the archive, nothing is written outside `staging`: `<tmp>`, `a` and
//! `b` hold nothing new (no leftover spool file either) and the sentinel is unchanged. On an
//! error `staging` is gone; on success it holds exactly the package's files, as regular
//! files with mode 0755 or 0644, and directories with 0755, and nothing else (no links).

#![no_main]

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use molt_archive::extract::{ExtractError, Extracted, Limits, extract};
use molt_schema::{PackageName, Platform};

const SENTINEL: &[u8] = b"the sentinel must not change\n";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let package = if selector & 0b100 == 0 {
        PackageName::Agent
    } else {
        PackageName::Updater
    };
    let limits = if selector & 0b1000 == 0 {
        Limits::default()
    } else {
        Limits {
            max_entries: 4,
            max_file_size: 64,
            max_total_size: 512,
        }
    };
    let (platform, archive) = match selector & 0b11 {
        0 => (Platform::LinuxAmd64, gzip(&fix_tar_checksums(body))),
        1 => (Platform::LinuxAmd64, gzip(body)),
        2 => (Platform::LinuxAmd64, body.to_vec()),
        _ => (Platform::WindowsAmd64, body.to_vec()),
    };

    let tmp = tempfile::tempdir().expect("a temporary directory");
    let b = tmp.path().join("a/b");
    fs::create_dir_all(&b).expect("create a/b");
    fs::write(b.join("sentinel"), SENTINEL).expect("write the sentinel");
    let dest = b.join("staging");

    let result = extract(archive.as_slice(), package, platform, &dest, &limits);

    assert_eq!(names(tmp.path()), ["a"], "something was written beside a/");
    assert_eq!(
        names(&tmp.path().join("a")),
        ["b"],
        "something was written beside a/b/"
    );
    let sentinel = fs::symlink_metadata(b.join("sentinel")).expect("the sentinel is there");
    assert!(sentinel.file_type().is_file() && sentinel.nlink() == 1);
    assert_eq!(
        fs::read(b.join("sentinel")).expect("read the sentinel"),
        SENTINEL
    );
    match result {
        Ok(extracted) => {
            assert_eq!(names(&b), ["sentinel", "staging"], "beside staging/");
            check_package(&dest, package, platform, &limits, &extracted);
        }
        Err(ExtractError::Cleanup {
            path,
            cleanup,
            cause,
        }) => {
            panic!(
                "{} was left behind ({cleanup}) after: {cause}",
                path.display()
            )
        }
        Err(e) => {
            let _ = e.to_string();
            assert_eq!(names(&b), ["sentinel"], "after {e:?}, beside the sentinel");
        }
    }
});

/// The names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    out.sort();
    out
}

/// A successful extraction wrote exactly the package's files, and nothing else.
fn check_package(
    dest: &Path,
    package: PackageName,
    platform: Platform,
    limits: &Limits,
    extracted: &Extracted,
) {
    let expected: BTreeSet<String> = package
        .files_for(platform)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let reported: BTreeSet<String> = extracted.files.iter().map(|f| f.name.clone()).collect();
    assert_eq!(reported, expected, "reported files");
    assert_eq!(
        extracted.files.len(),
        expected.len(),
        "a file reported twice"
    );

    let mut on_disk = BTreeSet::new();
    walk(dest, dest, &mut on_disk);
    assert_eq!(on_disk, expected, "files on disk");

    let mut total = 0;
    for f in &extracted.files {
        let meta = fs::symlink_metadata(dest.join(&f.name)).expect("an extracted file");
        assert!(meta.file_type().is_file());
        assert_eq!(meta.len(), f.size, "{}: size", f.name);
        assert!(
            f.size <= limits.max_file_size,
            "{}: over the file limit",
            f.name
        );
        let mode = meta.permissions().mode() & 0o7777;
        assert_eq!(
            mode,
            if f.executable { 0o755 } else { 0o644 },
            "{}: mode",
            f.name
        );
        total += f.size;
    }
    assert_eq!(total, extracted.total_size);
    assert!(total <= limits.max_total_size, "over the total limit");

    let version = fs::read(dest.join("VERSION")).expect("VERSION");
    let expected_version = std::str::from_utf8(&version)
        .ok()
        .filter(|_| version.len() <= 256)
        .map(|v| v.trim().to_owned());
    assert_eq!(extracted.version, expected_version, "the VERSION reported");
}

/// Every file under `dir`, relative to `root`; only directories (0755) and single-linked
/// regular files may be there.
fn walk(root: &Path, dir: &Path, files: &mut BTreeSet<String>) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("dir entry").path();
        let meta = fs::symlink_metadata(&path).expect("symlink_metadata");
        let rel = path
            .strip_prefix(root)
            .expect("under the root")
            .to_string_lossy()
            .into_owned();
        let kind = meta.file_type();
        if kind.is_dir() {
            assert_eq!(meta.permissions().mode() & 0o7777, 0o755, "{rel}/: mode");
            walk(root, &path, files);
        } else {
            assert!(
                kind.is_file(),
                "{rel} is neither a file nor a directory: {kind:?}"
            );
            assert_eq!(meta.nlink(), 1, "{rel} is linked elsewhere");
            files.insert(rel);
        }
    }
}

/// gzip, stored (level 0): cheap, and the fuzzer's bytes reach tar as they are.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::none());
    gz.write_all(data).expect("gzip into memory");
    gz.finish().expect("gzip into memory")
}

/// Sets the checksum of every tar header up to the first zero block, walking the entries by
/// their sizes as the `tar` crate does.
fn fix_tar_checksums(raw: &[u8]) -> Vec<u8> {
    let mut out = raw.to_vec();
    let mut at = 0usize;
    while let Some(end) = at.checked_add(512)
        && let Some(block) = out.get_mut(at..end)
    {
        if block.iter().all(|&b| b == 0) {
            break;
        }
        let mut header = tar::Header::new_old();
        header.as_mut_bytes().copy_from_slice(block);
        header.set_cksum();
        block.copy_from_slice(header.as_bytes());
        let Some(next) = header
            .entry_size()
            .ok()
            .and_then(|size| usize::try_from(size).ok())
            .and_then(|size| size.checked_next_multiple_of(512))
            .and_then(|size| size.checked_add(end))
        else {
            break;
        };
        at = next;
    }
    out
}
