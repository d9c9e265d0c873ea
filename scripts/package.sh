#!/usr/bin/env bash
# Builds molt's OS packages, a .deb (dpkg-deb) and an .rpm (rpmbuild), for one Linux
# platform of a release, from the archive `release-manifest package` made:
#
#   package.sh --version 1.4.0 --platform linux-amd64 --dist dist --trusted-root root.json \
#              --source 'https://{bucket}.s3.{region}.{domain}/' --bucket 'acme-molt-{region}' \
#              --out packages
#
# A package carries the bootstrap and nothing more (docs/operations.md, "Installing from the
# packages"): the release's molt-agent archive, byte for byte the target the release signs,
# described by bootstrap.json; its updater, which the maintainer scripts run; the trusted
# root; the units of agent/deploy/; and a config skeleton. Installing it hands the version to
# `updater bootstrap`. versions/ and current stay molt's.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: package.sh --version V --platform PLATFORM --dist DIR --trusted-root FILE --out DIR
                  [--source TEMPLATE] [--bucket TEMPLATE] [--formats deb,rpm]
                  [--maintainer 'NAME <EMAIL>'] [--fast]

  --version       the release's version, e.g. 1.4.0 (the archive's)
  --platform      linux-amd64, linux-arm64, linux-musl-amd64 or linux-musl-arm64
  --dist          what `release-manifest package --out` wrote
  --trusted-root  the release's root.json (the hosts' first trusted root)
  --source        the repository URL template for the config skeleton; without it the
                  config names none, and the image's builder sets it
  --bucket        the bucket name template for the config skeleton
  --out           where the packages go
  --formats       deb, rpm or both (default deb,rpm)
  --maintainer    the packages' maintainer field
  --fast          compress with gzip -1 instead of xz: bigger packages, built in a
                  tenth of the time (for tests)
USAGE
}

die() {
  echo "package.sh: error: $1" >&2
  [ $# -gt 1 ] && echo "package.sh: hint: $2" >&2
  exit 1
}

version='' platform='' dist='' trusted_root='' source='' bucket='' out='' formats=deb,rpm
maintainer='molt maintainers <molt@example.invalid>' fast=false
while [ $# -gt 0 ]; do
  case "$1" in
    --version | --platform | --dist | --trusted-root | --source | --bucket | --out | --formats | \
      --maintainer)
      if [ $# -lt 2 ] || [ -z "$2" ]; then
        die "$1 needs a value" "run package.sh --help for every option"
      fi
      ;;
  esac
  case "$1" in
    --version) version=$2; shift 2 ;;
    --platform) platform=$2; shift 2 ;;
    --dist) dist=$2; shift 2 ;;
    --trusted-root) trusted_root=$2; shift 2 ;;
    --source) source=$2; shift 2 ;;
    --bucket) bucket=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --formats) formats=$2; shift 2 ;;
    --maintainer) maintainer=$2; shift 2 ;;
    --fast) fast=true; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
done
for required in version platform dist trusted_root out; do
  [ -n "${!required}" ] || die "--${required//_/-} is required" "run package.sh --help for every option"
done
# The release's versions (SPEC §2): semver, no leading v.
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$ ]] ||
  die "--version must be a release version such as 1.4.0, got '$version'"
case "$platform" in
  linux-amd64 | linux-musl-amd64) deb_arch=amd64 rpm_arch=x86_64 ;;
  linux-arm64 | linux-musl-arm64) deb_arch=arm64 rpm_arch=aarch64 ;;
  *) die "there are OS packages for Linux only, not for '$platform'" ;;
esac
case ",$formats," in *,deb,* | *,rpm,*) ;; *) die "--formats must name deb, rpm or both, got '$formats'" ;; esac
[ -f "$trusted_root" ] || die "the trusted root $trusted_root does not exist"
archive_name="molt-agent-$platform.tar.gz"
archive="$dist/molt-agent/$version/$archive_name"
[ -f "$archive" ] || die "$archive does not exist" \
  "run release-manifest package --version $version --platform $platform --out $dist first"
case "$source$bucket" in
  *[\"\\]* | *$'\n'*) die "--source and --bucket cannot hold quotes, backslashes or newlines" ;;
esac

# Packaging versions: a pre-release sorts before its release with "~" in both formats
# (1.4.0-rc.1 becomes 1.4.0~rc.1), and RPM allows no "-" in a version.
pkg_version=${version/-/\~}
pkg_version=${pkg_version//-/.}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/molt-package.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Reproducible: every file's time is the release archive's.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(stat -c %Y "$archive")}"
umask 022

# The tree both formats install.
root="$work/root"
lib="$root/usr/lib/molt"
install -d "$lib" "$root/usr/lib/systemd/system" "$root/etc/molt" "$root/usr/share/doc/molt"
install -m 0644 "$archive" "$lib/$archive_name"
tar -xzf "$archive" -C "$work" --no-same-owner bin/updater ||
  die "$archive holds no bin/updater" "is it a molt-agent archive from release-manifest package?"
install -m 0755 "$work/bin/updater" "$lib/updater"
install -m 0755 "$here/packaging/package-hook" "$lib/package-hook"
install -m 0644 "$trusted_root" "$lib/root.json"
sha=$(sha256sum "$archive" | cut -d' ' -f1)
length=$(stat -c %s "$archive")
cat >"$lib/bootstrap.json" <<JSON
{
  "format": 1,
  "version": "$version",
  "platform": "$platform",
  "file": "$archive_name",
  "length": $length,
  "sha256": "$sha"
}
JSON
chmod 0644 "$lib/bootstrap.json"
units=(molt-agent.service molt-recover.service molt-recover.timer molt-update.service molt-update.path)
for unit in "${units[@]}"; do
  install -m 0644 "$here/agent/deploy/$unit" "$root/usr/lib/systemd/system/$unit"
done
{
  echo "# molt's host config, from the molt package; docs/operations.md lists every key."
  echo "# The region is not set: it is taken from MOLT_REGION, else from the instance's"
  echo "# metadata (IMDS) on EC2. Set region = \"...\" elsewhere."
  if [ -n "$source" ]; then
    echo "source = \"$source\""
  else
    echo "# The repository to update from: set source (and bucket) before the first boot."
    echo "# source = \"https://{bucket}.s3.{region}.{domain}/\""
  fi
  [ -n "$bucket" ] && echo "bucket = \"$bucket\""
  echo "# The first trusted root; the updater keeps the newest one it verified in"
  echo "# /opt/molt/state/tuf/."
  echo "trusted_root = \"/usr/lib/molt/root.json\""
  echo
  echo "[updater]"
  echo "service = \"systemd\""
  echo
  echo "[agent]"
} >"$root/etc/molt/agent.toml"
chmod 0644 "$root/etc/molt/agent.toml"
cat >"$root/usr/share/doc/molt/copyright" <<'TEXT'
molt: a self-updating host agent.
License: Apache-2.0 (/usr/share/common-licenses/Apache-2.0 on Debian).
TEXT
summary="molt host agent, kept current by its own verified updater"
description="The molt host agent and its bootstrap. Installing the package hands its version
to molt's updater, which installs it with the same atomic switch, health check and rollback
as any update, and then keeps the host current from its region's signed repository."

# Purging (a .deb only: RPM has no purge) removes what molt made.
purge_script='rm -rf /opt/molt
rm -f /var/lib/systemd/timers/stamp-molt-recover.timer /etc/molt/.disabled-by-package
rmdir /etc/molt 2>/dev/null || true'

if [[ ",$formats," == *,deb,* ]]; then
  command -v dpkg-deb >/dev/null || die "dpkg-deb is missing" "apt-get install dpkg"
  deb="$work/deb"
  cp -a "$root" "$deb"
  mkdir -m 0755 "$deb/DEBIAN"
  size=$(du -sk --exclude=DEBIAN "$deb" | cut -f1)
  {
    echo "Package: molt"
    echo "Version: $pkg_version"
    echo "Architecture: $deb_arch"
    echo "Maintainer: $maintainer"
    echo "Installed-Size: $size"
    # The glibc builds need glibc 2.28 (ci/release.yml builds them for it); musl's are static.
    case "$platform" in
      linux-musl-*) echo "Depends: systemd, passwd" ;;
      *) echo "Depends: systemd, passwd, libc6 (>= 2.28)" ;;
    esac
    echo "Section: admin"
    echo "Priority: optional"
    echo "Homepage: https://github.com/molt-project/molt"
    echo "Description: $summary"
    # shellcheck disable=SC2001 # every line, indented by one space
    sed 's/^/ /' <<<"$description"
  } >"$deb/DEBIAN/control"
  echo /etc/molt/agent.toml >"$deb/DEBIAN/conffiles"
  cat >"$deb/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
# $2 is the version configured before: none on a first install.
if [ "$1" = configure ]; then
  if [ -z "${2:-}" ]; then
    /usr/lib/molt/package-hook configure install
  else
    /usr/lib/molt/package-hook configure upgrade
  fi
fi
SH
  cat >"$deb/DEBIAN/prerm" <<'SH'
#!/bin/sh
set -e
# Not on an upgrade: molt's updater switches to the new package's version.
case "$1" in
  remove | deconfigure)
    if [ -x /usr/lib/molt/package-hook ]; then /usr/lib/molt/package-hook remove deb; fi
    ;;
esac
SH
  cat >"$deb/DEBIAN/postrm" <<SH
#!/bin/sh
set -e
if [ "\$1" = purge ]; then
$purge_script
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
SH
  chmod 0755 "$deb/DEBIAN/postinst" "$deb/DEBIAN/prerm" "$deb/DEBIAN/postrm"
  deb_file="$out/molt_${pkg_version}_${deb_arch}.deb"
  compression=(-Zxz)
  if $fast; then compression=(-Zgzip -z1); fi
  dpkg-deb --root-owner-group "${compression[@]}" --build "$deb" "$deb_file" >/dev/null
  echo "$deb_file"
fi

if [[ ",$formats," == *,rpm,* ]]; then
  command -v rpmbuild >/dev/null || die "rpmbuild is missing" "apt-get install rpm (Debian), or dnf install rpm-build"
  rpm_top="$work/rpmbuild"
  mkdir -p "$rpm_top"/{BUILD,RPMS,SPECS,BUILDROOT}
  spec="$rpm_top/SPECS/molt.spec"
  {
    echo "Name: molt"
    echo "Version: $pkg_version"
    echo "Release: 1"
    echo "Summary: $summary"
    echo "License: Apache-2.0"
    echo "URL: https://github.com/molt-project/molt"
    echo "Packager: $maintainer"
    echo "BuildArch: $rpm_arch"
    echo "Requires: systemd"
    echo "Requires(post): shadow-utils, systemd"
    echo "Requires(preun): systemd"
    # The binaries go in as the release built them: not stripped, no debuginfo package.
    echo "%global debug_package %{nil}"
    echo "%global __os_install_post %{nil}"
    echo "%global _build_id_links none"
    echo
    echo "%description"
    echo "$description"
    echo
    echo "%install"
    echo "cp -a '$root/.' %{buildroot}/"
    echo
    echo "%files"
    echo "%dir /usr/lib/molt"
    (cd "$root" && find usr/lib/molt -type f | sort | sed 's#^#/#')
    for unit in "${units[@]}"; do echo "/usr/lib/systemd/system/$unit"; done
    echo "%dir /etc/molt"
    echo "%config(noreplace) /etc/molt/agent.toml"
    echo "%doc /usr/share/doc/molt/copyright"
    echo "%dir /usr/share/doc/molt"
    echo
    echo "%post"
    echo "# 1: a first install; 2 or more: an upgrade."
    # shellcheck disable=SC2016 # the scriptlet's own $1
    echo 'if [ "$1" -eq 1 ]; then /usr/lib/molt/package-hook configure install; else /usr/lib/molt/package-hook configure upgrade; fi'
    echo
    echo "%preun"
    echo "# 0: the package is erased (1: upgraded, and molt's updater switches)."
    # shellcheck disable=SC2016 # the scriptlet's own $1
    echo 'if [ "$1" -eq 0 ] && [ -x /usr/lib/molt/package-hook ]; then /usr/lib/molt/package-hook remove rpm; fi'
    echo
    echo "%postun"
    echo 'if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi'
  } >"$spec"
  # rpmbuild's own payload compression (xz) unless --fast; every rpm since 4.x reads both.
  payload=()
  if $fast; then payload=(--define "_binary_payload w1.gzdio"); fi
  rpmbuild --quiet --define "_topdir $rpm_top" "${payload[@]}" \
    --define "use_source_date_epoch_as_buildtime 1" --define "clamp_mtime_to_source_date_epoch 1" \
    --target "$rpm_arch" -bb "$spec" >/dev/null
  rpm_file="$out/molt-${pkg_version}-1.${rpm_arch}.rpm"
  mv "$rpm_top/RPMS/$rpm_arch/molt-${pkg_version}-1.${rpm_arch}.rpm" "$rpm_file"
  echo "$rpm_file"
fi
