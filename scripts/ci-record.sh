#!/usr/bin/env bash
# Keeps the publisher's record (docs/operations.md, "The publisher's record") on its branch.
#
#   scripts/ci-record.sh keep DIR MESSAGE
#
# DIR is a checkout of the branch `molt-record` (ci/release.yml checks it out without keeping
# credentials); GH_TOKEN is a token that may push to it.
# Commits what changed under DIR/published and pushes it, rebasing on what another job pushed in
# the meantime (jobs change different regions' directories, or the same one in turn: two
# publishers cannot both replace one region's timestamp). A push that still fails leaves the
# record behind the buckets, which is safe: the next command follows a newer bucket.
set -euo pipefail

usage() {
  echo "usage: $0 keep DIR MESSAGE" >&2
  exit 2
}

[[ $# -eq 3 && $1 == keep ]] || usage
dir=$2
message=$3
if [[ ! -d $dir/.git ]]; then
  echo "error: $dir is not a checkout of the record's branch" >&2
  exit 1
fi
cd "$dir"
# The checkout kept no credentials (nothing later in the job can publish them); the token is
# handed to these git calls only.
: "${GH_TOKEN:?GH_TOKEN must hold a token that may push to the branch molt-record}"
# Through the environment, not the command line, where other processes could read it.
auth="AUTHORIZATION: basic $(printf 'x-access-token:%s' "$GH_TOKEN" | base64 -w0)"
remote() { GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=http.extraheader GIT_CONFIG_VALUE_0="$auth" git "$@"; }
git config user.name "molt release pipeline"
git config user.email "molt-release@users.noreply.github.com"
git add -A published
if git diff --cached --quiet; then
  echo "the record is unchanged"
  exit 0
fi
git commit -q -m "record: $message"
for attempt in 1 2 3 4 5; do
  if remote push -q origin HEAD:molt-record; then
    echo "the record is kept ($(git rev-parse --short HEAD))"
    exit 0
  fi
  echo "push $attempt failed; rebasing on the branch as it is now" >&2
  sleep $((attempt * 2))
  if ! remote pull -q --rebase origin molt-record; then
    # Two jobs changed the same region's files: never resolve that by hand here.
    git rebase --abort 2>/dev/null || true
    break
  fi
done
echo "::error::cannot push the record; the buckets are ahead of it, which is safe, but push it by hand (git -C $dir push origin HEAD:molt-record)" >&2
exit 1
