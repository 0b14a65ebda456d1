#!/bin/bash
# Builds kvtier_VERSION_ARCH.deb from the release build: `make install` into a staging root with
# Debian's paths (PREFIX=/usr, units in /lib/systemd/system), binaries without debug info
# (symbols kept for backtraces), the maintainer scripts and control file of deploy/debian.
#
#   make-deb.sh OUT_DIR    (run by `make deb`; prints the package's path last)
set -euo pipefail

out=${1:?usage: make-deb.sh OUT_DIR}
repo=$(cd "$(dirname "$0")/../.." && pwd)
stage=$out/stage
rm -rf "$stage"
mkdir -p "$stage/DEBIAN"
make -C "$repo" --no-print-directory install DESTDIR="$stage" PREFIX=/usr UNITDIR=/lib/systemd/system > "$out/install.log"
for b in kvtierd kvtierctl kvtier-bench; do strip --strip-debug "$stage/usr/bin/$b"; done

# "0.2.0 (d03999a-dirty)" -> Debian version 0.2.0+gitd03999a.dirty
read -r version describe < <("$repo/.build/release/kvtierd" --version | tr -d '()')
debversion="$version+git$(echo "$describe" | tr -c 'A-Za-z0-9.+~\n' '.')"
arch=$(dpkg --print-architecture)
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$debversion/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" "$repo/deploy/debian/control.in" > "$stage/DEBIAN/control"
install -m 0755 "$repo/deploy/debian/postinst" "$repo/deploy/debian/prerm" "$repo/deploy/debian/postrm" "$stage/DEBIAN/"
echo /etc/kvtier/kvtierd.toml > "$stage/DEBIAN/conffiles"

package=$out/kvtier_${debversion}_$arch.deb
rm -f "$out"/kvtier_*.deb
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$package" > /dev/null
rm -rf "$stage"
echo "$package"
