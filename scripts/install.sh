#!/usr/bin/env bash
# Bootstraps molt on a host from a region's repository.
#
# Nothing unverified ever runs: the first updater comes from a local file the operator
# provides, or from a URL together with the sha256 the operator got from the release
# (`release-manifest verify --json` lists every target's sha256). That updater then does
# the first install through TUF, from the trusted root given here.
#
#   install.sh --region us-east-1 --source 'https://{bucket}.s3.{region}.{domain}/' \
#              --bucket 'acme-molt-{region}' --trusted-root root.json \
#              --updater-url URL --updater-sha256 HEX
#
# The updater may be the molt-updater package (.tar.gz; its bin/updater is used) or a
# bare binary. Run with --help for every option.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: install.sh --region REGION --source TEMPLATE --trusted-root FILE
                  (--updater-file FILE [--updater-sha256 HEX] | --updater-url URL --updater-sha256 HEX)
                  [--bucket TEMPLATE] [--root DIR] [--config FILE] [--service systemd|direct]
                  [--systemd-dir DIR] [--agent-user USER] [--target-version V] [--schedule EXPR]

  --region          the host's region (written to the config)
  --source          the repository URL template, e.g. https://{bucket}.s3.{region}.{domain}/
  --bucket          the bucket name template, e.g. acme-molt-{region}
  --trusted-root    the root.json this host trusts (copied into the config's directory)
  --updater-file    a local molt-updater package (.tar.gz) or updater binary
  --updater-url     where to download it; --updater-sha256 is then required
  --updater-sha256  the expected sha256 of the file or download
  --root            install root (default /opt/molt)
  --config          config file to write if absent (default /etc/molt/agent.toml)
  --service         systemd (default when systemd runs) or direct
  --systemd-dir     where unit files go (default /etc/systemd/system)
  --agent-user      the user the agent runs as under systemd (default molt, created as a
                    system user if missing); only the updater runs as root
  --target-version  the first version to install (default latest)
  --schedule        the agent's schedule (default: the agent's, rate(14 days))
USAGE
}

die() {
  echo "install.sh: error: $1" >&2
  [ $# -gt 1 ] && echo "install.sh: hint: $2" >&2
  exit 1
}

region='' source='' bucket='' trusted_root='' updater_file='' updater_url='' updater_sha=''
root=/opt/molt config=/etc/molt/agent.toml service='' systemd_dir=/etc/systemd/system
agent_user=molt
target=latest schedule=''
while [ $# -gt 0 ]; do
  case "$1" in
    --region | --source | --bucket | --trusted-root | --updater-file | --updater-url | \
      --updater-sha256 | --root | --config | --service | --systemd-dir | --target-version | --schedule | \
      --agent-user)
      if [ $# -lt 2 ] || [ -z "$2" ]; then
        die "$1 needs a value" "run install.sh --help for every option"
      fi
      ;;
  esac
  case "$1" in
    --region) region=$2; shift 2 ;;
    --source) source=$2; shift 2 ;;
    --bucket) bucket=$2; shift 2 ;;
    --trusted-root) trusted_root=$2; shift 2 ;;
    --updater-file) updater_file=$2; shift 2 ;;
    --updater-url) updater_url=$2; shift 2 ;;
    --updater-sha256) updater_sha=$2; shift 2 ;;
    --root) root=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --service) service=$2; shift 2 ;;
    --systemd-dir) systemd_dir=$2; shift 2 ;;
    --agent-user) agent_user=$2; shift 2 ;;
    --target-version) target=$2; shift 2 ;;
    --schedule) schedule=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
done

# The root and the config are written into the config and the unit files, which are read
# from other working directories (systemd's is /): make them absolute.
# Trailing slashes are dropped (`--root /opt/molt/`), so the units name `/opt/molt/agent`, not
# `/opt/molt//agent`.
absolute() {
  local p=$1
  while [ "${#p}" -gt 1 ] && [ "${p%/}" != "$p" ]; do p=${p%/}; done
  case "$p" in /*) printf '%s' "$p" ;; *) printf '%s/%s' "$PWD" "$p" ;; esac
}
root=$(absolute "$root")
config=$(absolute "$config")
systemd_dir=$(absolute "$systemd_dir")

[ -n "$region" ] || die "--region is required" "pass the host's region, e.g. --region us-east-1"
[ -n "$source" ] || die "--source is required" "pass the repository URL template"
[ -n "$trusted_root" ] || die "--trusted-root is required" "pass the root.json from the release keys"
[ -f "$trusted_root" ] || die "the trusted root $trusted_root does not exist"
if [ -n "$updater_url" ] && [ -n "$updater_file" ]; then
  die "give --updater-file or --updater-url, not both"
fi
[ -n "$updater_url$updater_file" ] || die "no updater given" "pass --updater-file FILE, or --updater-url URL with --updater-sha256 HEX"
if [ -n "$updater_url" ] && [ -z "$updater_sha" ]; then
  die "--updater-url needs --updater-sha256" "take the sha256 from the release (release-manifest verify --json); nothing unverified runs"
fi
if [ -n "$updater_sha" ] && ! [[ "$updater_sha" =~ ^[0-9a-fA-F]{64}$ ]]; then
  die "--updater-sha256 must be 64 hex digits, got '$updater_sha'"
fi
if [ -z "$service" ]; then
  if [ -d /run/systemd/system ]; then service=systemd; else service=direct; fi
fi
case "$service" in systemd | direct) ;; *) die "--service must be systemd or direct, got '$service'" ;; esac
if [ "$service" = systemd ]; then
  case "$root$config" in
    *[[:space:]]*) die "the root and the config path cannot contain whitespace in systemd mode" \
      "unit files split their commands and environment on whitespace; choose other paths" ;;
  esac
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/molt-install.XXXXXX")
trap 'rm -rf "$work"' EXIT

# 1. The first updater, verified before it runs.
fetched="$work/fetched"
if [ -n "$updater_url" ]; then
  echo "downloading $updater_url"
  if command -v curl >/dev/null; then
    curl -fsSL --proto '=https,http,file' -o "$fetched" "$updater_url" || die "cannot download $updater_url"
  elif command -v wget >/dev/null; then
    wget -q -O "$fetched" "$updater_url" || die "cannot download $updater_url"
  else
    die "neither curl nor wget is installed" "install one, or pass --updater-file"
  fi
else
  cp "$updater_file" "$fetched" || die "cannot read $updater_file"
fi
if [ -n "$updater_sha" ]; then
  actual=$(sha256sum "$fetched" | cut -d' ' -f1)
  want=$(printf '%s' "$updater_sha" | tr 'A-F' 'a-f')
  if [ "$actual" != "$want" ]; then
    die "the updater's sha256 is $actual, expected $want; nothing was installed" \
      "the download is corrupt or tampered with: fetch it again from the release, and check the sha256 you were given"
  fi
  echo "updater sha256 verified: $actual"
fi
updater="$work/updater"
if gzip -t "$fetched" 2>/dev/null; then
  mkdir "$work/pkg"
  tar -xzf "$fetched" -C "$work/pkg" --no-same-owner bin/updater ||
    die "the package holds no bin/updater" "pass the molt-updater package or the updater binary"
  mv "$work/pkg/bin/updater" "$updater"
else
  mv "$fetched" "$updater"
fi
chmod 0755 "$updater"
status=0
"$updater" --version >/dev/null 2>&1 || status=$?
if [ "$status" -eq 126 ]; then
  die "cannot execute $updater" \
    "the filesystem of $work may be mounted noexec: set TMPDIR to a directory that allows execution"
elif [ "$status" -ne 0 ]; then
  die "the updater does not run on this host" "check that it was built for this platform"
fi

# 2. The config, unless the host already has one.
config_dir=$(dirname "$config")
mkdir -p "$config_dir"
# (The operator may pass the very file that is already there.)
if ! [ "$trusted_root" -ef "$config_dir/root.json" ]; then
  cp "$trusted_root" "$config_dir/root.json"
fi
chmod 0644 "$config_dir/root.json"
# A TOML basic string: backslashes and quotes escaped.
toml() {
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}
if [ -e "$config" ]; then
  echo "keeping the existing config $config: its region, source, bucket, schedule and service" \
    "apply, not the options given here (edit it, or remove it to have it written again)"
else
  {
    echo "# molt's host config; docs/operations.md lists every key."
    echo "root = $(toml "$root")"
    echo "region = $(toml "$region")"
    echo "source = $(toml "$source")"
    [ -n "$bucket" ] && echo "bucket = $(toml "$bucket")"
    echo "trusted_root = $(toml "$config_dir/root.json")"
    echo
    echo "[updater]"
    echo "service = $(toml "$service")"
    echo
    echo "[agent]"
    [ -n "$schedule" ] && echo "schedule = $(toml "$schedule")"
    true
  } >"$config.tmp"
  # The agent (its own user under systemd) reads the config: not the umask's to decide.
  chmod 0644 "$config.tmp"
  mv "$config.tmp" "$config"
  echo "wrote $config"
fi

# 3. The service files (systemd), before the first install starts the agent through them,
#    and the agent's user: under systemd the agent runs as `molt`, and may write only
#    $root/agent (docs/operations.md, "Users and permissions").
if [ "$service" = systemd ]; then
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  units="$here/../agent/deploy"
  [ -d "$units" ] || units="$here/deploy"
  [ -f "$units/molt-agent.service" ] || die "cannot find the unit files next to install.sh"
  [[ "$agent_user" =~ ^[a-z_][a-z0-9_-]*$ ]] ||
    die "--agent-user must be a user name (lower case letters, digits, - and _), got '$agent_user'"
  if ! id -u "$agent_user" >/dev/null 2>&1; then
    command -v useradd >/dev/null ||
      die "cannot create the agent's user $agent_user: useradd is missing" \
        "install the passwd package, or create a system user $agent_user"
    useradd --system --user-group --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin --comment "molt host agent" "$agent_user" ||
      die "cannot create the agent's user $agent_user"
    echo "created the system user $agent_user"
  fi
  agent_group=$(id -gn "$agent_user")
  # The agent may have put anything in its own directory (a reinstall runs beside a
  # running agent): nothing below agent/ is followed or given away. agent/ itself is safe
  # to name, as only root can create or replace entries of $root.
  mkdir -p "$root"
  if [ -L "$root/agent" ] || { [ -e "$root/agent" ] && ! [ -d "$root/agent" ]; }; then
    die "$root/agent is not a directory" "remove it; install.sh makes it again"
  fi
  mkdir -p "$root/agent"
  chown -h "$agent_user:$agent_group" "$root/agent"
  chmod 0755 "$root/agent"
  if ! [ -e "$root/agent/requests" ] && ! [ -L "$root/agent/requests" ]; then
    mkdir "$root/agent/requests" && chown -h "$agent_user:$agent_group" "$root/agent/requests"
  fi
  mkdir -p "$systemd_dir"
  # The replacements with sed's special characters (#, & and \) escaped; the root first,
  # so that a config under /opt/molt is not rewritten again.
  sed_root=$(printf '%s' "$root" | sed 's/[#&\\]/\\&/g')
  sed_config=$(printf '%s' "$config" | sed 's/[#&\\]/\\&/g')
  for unit in molt-agent.service molt-recover.service molt-recover.timer \
    molt-update.service molt-update.path; do
    sed -e "s#/opt/molt#$sed_root#g" -e "s#/etc/molt/agent.toml#$sed_config#g" \
      -e "s#^User=molt\$#User=$agent_user#" -e "s#^Group=molt\$#Group=$agent_group#" \
      -e "s#-o molt -g molt#-o $agent_user -g $agent_group#" \
      "$units/$unit" >"$systemd_dir/$unit"
  done
  systemctl daemon-reload
fi

# 4. The first install, through TUF. It also places $root/bin/updater.
echo "installing molt ($target) into $root"
MOLT_CONFIG="$config" "$updater" --root "$root" --target-version "$target" ||
  die "the first install failed (see above); nothing runs from $root yet" \
    "fix what the updater names, then run install.sh again"

if [ "$service" = systemd ]; then
  systemctl enable molt-agent.service molt-recover.timer molt-update.path
  systemctl start molt-recover.timer molt-update.path
fi
echo "installed; the agent runs from $root/current"
"$root/current/bin/agent" --config "$config" status || true
