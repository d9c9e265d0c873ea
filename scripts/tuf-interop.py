"""Reads a molt region with python-tuf's ngclient, an independent TUF 1.0 client.

    tuf-interop.py METADATA_URL TARGETS_URL TRUSTED_ROOT WORKDIR [KEY.pem ...]

Refreshes the region from TRUSTED_ROOT (the keys directory's root.json), downloads every
target that the verified targets metadata lists (ngclient checks each one's length and
hashes), checks that every archive the manifest offers is one of them with the same SHA-256,
and loads each KEY.pem with `cryptography`. Exits non-zero on the first failure.
"""

import hashlib
import json
import pathlib
import shutil
import sys

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from tuf.api.metadata import Metadata
from tuf.ngclient import Updater


def main() -> int:
    metadata_url, targets_url, trusted_root, workdir, *keys = sys.argv[1:]
    work = pathlib.Path(workdir)
    shutil.rmtree(work, ignore_errors=True)
    metadata_dir = work / "metadata"
    target_dir = work / "targets"
    metadata_dir.mkdir(parents=True)
    target_dir.mkdir()

    updater = Updater(
        metadata_dir=str(metadata_dir),
        metadata_base_url=metadata_url,
        target_base_url=targets_url,
        target_dir=str(target_dir),
        bootstrap=pathlib.Path(trusted_root).read_bytes(),
    )
    updater.refresh()
    # ngclient keeps the metadata it verified; its targets list is the signed one.
    targets = Metadata.from_file(str(metadata_dir / "targets.json")).signed.targets
    if "manifest.json" not in targets:
        print("the region's targets list no manifest.json", file=sys.stderr)
        return 1
    downloaded = {}
    for name in sorted(targets):
        info = updater.get_targetinfo(name)
        if info is None:
            print(f"{name}: listed but not found by get_targetinfo", file=sys.stderr)
            return 1
        path = updater.download_target(info, str(target_dir / name))
        data = pathlib.Path(path).read_bytes()
        if len(data) != info.length:
            print(f"{name}: {len(data)} bytes, signed {info.length}", file=sys.stderr)
            return 1
        downloaded[name] = hashlib.sha256(data).hexdigest()
        print(f"ok  {info.length:>10}  {downloaded[name]}  {name}")

    manifest = json.loads((target_dir / "manifest.json").read_bytes())
    offered = 0
    for package in manifest.get("Packages", []):
        for file in package.get("Files", []):
            for entry in file.get("AvailableVersions", []):
                name = file["Name"]
                prefix = package["Name"] + "-"
                rest = name[len(prefix):] if name.startswith(prefix) else name
                target = f"{package['Name']}-{entry['Version']}-{rest}"
                if target not in downloaded:
                    print(f"the manifest offers {target}, which is not a signed target", file=sys.stderr)
                    return 1
                checksum = entry.get("Checksum")
                if checksum and checksum.removeprefix("sha256:") != downloaded[target]:
                    print(f"{target}: the manifest's checksum {checksum} is not the signed one", file=sys.stderr)
                    return 1
                offered += 1
    if offered == 0:
        print("the manifest offers no archive", file=sys.stderr)
        return 1

    for key in keys:
        load_pem_private_key(pathlib.Path(key).read_bytes(), password=None)
        print(f"ok  cryptography loads {pathlib.Path(key).name}")
    print(f"python-tuf verified {len(downloaded)} targets, {offered} offered by the manifest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
