# shellcheck shell=bash
# Sourced by the scripts that need pinned tools from PyPI (scripts/lint-ci.sh,
# scripts/tuf-interop.sh): `pinned_venv DIR "REQUIREMENTS"` installs them once into DIR under
# target/ (no root, nothing outside the work tree), and a second run finds them there. It sets
# PINNED_PYTHON to the interpreter to run them with, and puts DIR/bin first on PATH.
pinned_venv() {
  local venv=$1 want=$2
  local stamp="$venv/.installed"
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "installing $want into $venv"
    rm -rf "$venv"
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
    if python3 -m venv "$venv" 2>/dev/null; then
      # shellcheck disable=SC2086 # $want is a list of requirements
      "$venv/bin/python" -m pip install --quiet --only-binary=:all: $want
    else
      # A Python without the venv module (Debian's python3 without python3-venv): pip's
      # --target needs none and, like the venv, keeps the system clean.
      rm -rf "$venv"
      # shellcheck disable=SC2086
      python3 -m pip install --quiet --only-binary=:all: --target "$venv" $want
    fi
    printf '%s\n' "$want" > "$stamp"
  fi
  if [[ -e "$venv/pyvenv.cfg" ]]; then
    export PINNED_PYTHON="$PWD/$venv/bin/python"
  else
    # Installed with --target: the modules are found through PYTHONPATH.
    export PYTHONPATH="$PWD/$venv${PYTHONPATH:+:$PYTHONPATH}"
    export PINNED_PYTHON=python3
  fi
  export PATH="$PWD/$venv/bin:$PATH"
}
