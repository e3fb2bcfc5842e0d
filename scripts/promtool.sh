#!/usr/bin/env bash
# Prints the path of a promtool binary, for checking packaging/prometheus/
# and packaging/grafana/ (scripts/check-dashboard.py). Uses `promtool` from
# PATH, else target/tools/promtool, else takes promtool out of Debian's
# prometheus package into target/tools/ without installing the package (that
# would start a Prometheus service).
#
#   "$(scripts/promtool.sh)" test rules packaging/prometheus/capra-rules.test.yml
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v promtool >/dev/null 2>&1; then
    command -v promtool
    exit 0
fi
DEST=$PWD/target/tools/promtool
if [ -x "$DEST" ]; then
    echo "$DEST"
    exit 0
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
chmod 0755 "$TMP"   # apt fetches as user _apt
cd "$TMP"
if ! apt-get download -qq prometheus >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get download -qq prometheus >/dev/null
fi
dpkg-deb -x prometheus_*.deb root
mkdir -p "$(dirname "$DEST")"
install -m 0755 root/usr/bin/promtool "$DEST.tmp"
mv "$DEST.tmp" "$DEST"
echo "$DEST"
