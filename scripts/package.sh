#!/usr/bin/env bash
# Builds capra's .deb (Ubuntu 20.04+, Debian 11+) and .rpm (RHEL/CentOS 8+)
# into target/packages/, from packaging/, units/ and plugins/.
#
# The binary is built against glibc 2.28 (RHEL 8; Ubuntu 20.04 has 2.31)
# with cargo-zigbuild and OpenSSL linked statically (feature
# static-openssl), so it runs on the releases the packages are for, not only
# on the Debian 12 it is built on. Tools it needs are installed when missing:
# zig (PyPI: ziglang), cargo-zigbuild (PyPI's prebuilt binary, pinned: CI
# need not compile it on every fresh machine), rpm (Debian: rpmbuild).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
TARGET=x86_64-unknown-linux-gnu
OUT=target/packages
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR_PKG:-$ROOT/target/pkg}

python3 -c 'import ziglang' 2>/dev/null || python3 -m pip install -q ziglang
if ! command -v cargo-zigbuild >/dev/null; then
    python3 -m pip install -q cargo-zigbuild==0.24.1
    PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
fi
command -v rpmbuild >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rpm >/dev/null; }

echo "== building capra $VERSION for glibc 2.28"
cargo zigbuild --release --quiet --target "$TARGET.2.28" --features static-openssl --bin capra
BIN=$CARGO_TARGET_DIR/$TARGET/release/capra

rm -rf "$OUT" && mkdir -p "$OUT"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
install -D -m 0755 "$BIN" "$STAGE/usr/bin/capra"
for u in units/*.service units/*.timer; do
    install -D -m 0644 "$u" "$STAGE/usr/lib/systemd/system/$(basename "$u")"
done
install -D -m 0640 packaging/etc/capra.conf "$STAGE/etc/capra/capra.conf"
# Prometheus rules and Grafana dashboard (docs/metrics.md).
install -D -m 0644 packaging/prometheus/capra-rules.yml "$STAGE/usr/share/capra/prometheus/capra-rules.yml"
install -D -m 0644 packaging/grafana/capra.json "$STAGE/usr/share/capra/grafana/capra.json"
# The man page and completions come from the CLI definitions themselves.
"$BIN" generate-docs "$STAGE/gen"
install -D -m 0644 "$STAGE/gen/capra.1" "$STAGE/usr/share/man/man1/capra.1"
gzip -9n "$STAGE/usr/share/man/man1/capra.1"
install -D -m 0644 "$STAGE/gen/capra.bash" "$STAGE/usr/share/bash-completion/completions/capra"
install -D -m 0644 "$STAGE/gen/_capra" "$STAGE/usr/share/zsh/vendor-completions/_capra"
install -D -m 0644 "$STAGE/gen/capra.fish" "$STAGE/usr/share/fish/vendor_completions.d/capra.fish"
rm -rf "$STAGE/gen"
DOC=$STAGE/usr/share/doc/capra
install -D -m 0644 README.md "$DOC/README.md"
install -D -m 0644 plugins/README.md "$DOC/examples/plugins/README.md"
for p in plugins/*.lua; do install -m 0644 "$p" "$DOC/examples/plugins/"; done
printf 'capra (%s) stable; urgency=medium\n\n  * Release %s.\n\n -- capra developers <capra@localhost>  %s\n' \
    "$VERSION" "$VERSION" "$(date -R)" | gzip -9n > "$DOC/changelog.gz"
cat > "$DOC/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: capra
Files: *
Copyright: capra developers
License: BSD-3-Clause
COPY
install -d -m 0750 "$STAGE/var/lib/capra" "$STAGE/var/log/capra"

echo "== .deb"
DEB=$(mktemp -d)
cp -a "$STAGE/." "$DEB/"
mkdir -p "$DEB/DEBIAN"
SIZE=$(du -sk --exclude=DEBIAN "$DEB" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@SIZE@/$SIZE/" packaging/deb/control.in > "$DEB/DEBIAN/control"
echo /etc/capra/capra.conf > "$DEB/DEBIAN/conffiles"
install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$DEB/DEBIAN/"
dpkg-deb --root-owner-group -Zxz --build "$DEB" "$OUT/capra_${VERSION}_amd64.deb" >/dev/null
rm -rf "$DEB"

echo "== .rpm"
RPMTOP=$(mktemp -d)
sed -e "s/@VERSION@/$VERSION/" -e "s|@STAGE@|$STAGE|" packaging/rpm/capra.spec.in > "$RPMTOP/capra.spec"
rpmbuild -bb --quiet --define "_topdir $RPMTOP" --define "_build_id_links none" \
    --define "_binary_payload w9.gzdio" "$RPMTOP/capra.spec" >/dev/null 2>&1 || \
    rpmbuild -bb --define "_topdir $RPMTOP" --define "_build_id_links none" "$RPMTOP/capra.spec"
cp "$RPMTOP"/RPMS/x86_64/capra-"$VERSION"-1.x86_64.rpm "$OUT/"
rm -rf "$RPMTOP"

echo "== glibc the binary needs (objdump -T)"
objdump -T "$BIN" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1
ls -l "$OUT"
