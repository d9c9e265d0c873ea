#!/usr/bin/env python3
"""Writes the extract target's seeds (fuzz/seeds/extract/): small well-formed packages, and a
few hostile ones, each prefixed with the selector byte that fuzz_targets/extract.rs reads
(bits 0-1: 0 raw tar, checksums fixed and gzip'd by the target; 1 raw tar gzip'd by the
target; 2 tar.gz; 3 zip. bit 2: molt-updater instead of molt-agent. bit 3: tight limits).

The output is deterministic (mtime 0, fixed zip dates). The seeds are committed; run this only
to change them: `python3 fuzz/seeds/generate.py`.
"""

import gzip
import io
import os
import tarfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "extract")

# The files of each package (release-manifest/src/artifact.rs): (name, executable).
PACKAGES = {
    "agent": [("VERSION", False), ("bin/agent", True), ("bin/updater", True)],
    "updater": [("VERSION", False), ("bin/updater", True)],
}
SELECT_UPDATER = 0b100
SELECT_TIGHT = 0b1000


def contents(name):
    # Small enough for the target's tight limits (64 bytes a file, 512 in all, the archive too).
    return b"1.4.0\n" if name == "VERSION" else ("#!/bin/sh\n# %s\n" % name).encode()


def tar_bytes(members):
    """A ustar archive ending right after its two end-of-archive blocks (no record padding).
    members: (name, type, mode, data, linkname)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, kind, mode, data, link in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = mode
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.linkname = link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        end = tf.offset
    return buf.getvalue()[: end + 1024]


def package_tar(files, exe_mode=0o755):
    members = [("bin/", tarfile.DIRTYPE, 0o755, b"", "")]
    for name, exe in files:
        members.append((name, tarfile.REGTYPE, exe_mode if exe else 0o644, contents(name), ""))
    return tar_bytes(members)


def zip_bytes(members):
    """members: (name, unix mode or None, data)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, mode, data in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3 if mode is not None else 0
            info.external_attr = (mode << 16) if mode is not None else 0
            info.compress_type = zipfile.ZIP_STORED if name.endswith("/") else zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


def package_zip(files, modes=True):
    members = [("bin/", 0o040755 if modes else None, b"")]
    for name, exe in files:
        name = name + ".exe" if exe else name
        mode = (0o100755 if exe else 0o100644) if modes else None
        members.append((name, mode, contents(name)))
    return zip_bytes(members)


def write(name, selector, body):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(bytes([selector]) + body)


def main():
    os.makedirs(OUT, exist_ok=True)
    for old in os.listdir(OUT):
        os.remove(os.path.join(OUT, old))
    agent, updater = PACKAGES["agent"], PACKAGES["updater"]
    # Well-formed packages, through every selector.
    write("tar-agent", 0, package_tar(agent))
    write("tar-updater-tight", SELECT_UPDATER | SELECT_TIGHT, package_tar(updater))
    write("tar-raw-agent", 1, package_tar(agent))
    write("targz-agent", 2, gzip.compress(package_tar(agent), mtime=0))
    write("targz-updater", 2 | SELECT_UPDATER, gzip.compress(package_tar(updater), mtime=0))
    write("zip-agent", 3, package_zip(agent))
    write("zip-updater-dos-tight", 3 | SELECT_UPDATER | SELECT_TIGHT, package_zip(updater, modes=False))
    # Hostile ones, each one change away from a package.
    escape = [("bin/", tarfile.DIRTYPE, 0o755, b"", ""), ("../escape", tarfile.REGTYPE, 0o644, b"x", "")]
    write("tar-dotdot", 0, tar_bytes(escape))
    link = [
        ("bin/", tarfile.DIRTYPE, 0o755, b"", ""),
        ("bin/agent", tarfile.SYMTYPE, 0o777, b"", "../../sentinel"),
        ("VERSION", tarfile.REGTYPE, 0o644, b"1.4.0\n", ""),
    ]
    write("tar-symlink", 0, tar_bytes(link))
    write("tar-setuid", 0, package_tar(agent, exe_mode=0o4755))
    write("zip-symlink", 3, zip_bytes([("bin/agent.exe", 0o120777, b"../../sentinel"), ("VERSION", 0o100644, b"1.4.0\n")]))


if __name__ == "__main__":
    main()
