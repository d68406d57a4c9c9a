#!/usr/bin/env bash
# Vendors the web console's one JavaScript library, D3 v3 (force layout),
# from Debian's libjs-d3 package into internal/console/assets/vendor/,
# where go:embed picks it up. npm is not used: the console is built from
# what a Debian mirror serves, and its output is committed, so a build
# needs neither this script nor a network. Run it to refresh the file;
# it refuses a file whose sha256 differs from the one pinned here (a new
# package version means a reviewed change of this script).
set -euo pipefail

version=3.5.17-4
sha256=1a2f33dad4948edb0648bf2b2518e89f91fca2ed5888e13b650ae54438d19841

root=$(cd "$(dirname "$0")/.." && pwd)
dest=$root/internal/console/assets/vendor
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp" # apt's _apt user writes the download here

if ! command -v apt-get >/dev/null; then
	echo "vendor-js: needs apt-get (a Debian machine); the vendored files are committed, so a build does not need this script" >&2
	exit 1
fi
(cd "$tmp" && apt-get download -q "libjs-d3=$version")
dpkg-deb -x "$tmp"/libjs-d3_*.deb "$tmp/x"
got=$(sha256sum "$tmp/x/usr/share/javascript/d3/d3.min.js" | cut -d' ' -f1)
if [ "$got" != "$sha256" ]; then
	echo "vendor-js: d3.min.js from libjs-d3 $version has sha256 $got, want $sha256; not copied" >&2
	exit 1
fi
mkdir -p "$dest"
install -m 0644 "$tmp/x/usr/share/javascript/d3/d3.min.js" "$dest/d3.min.js"
install -m 0644 "$tmp/x/usr/share/doc/libjs-d3/copyright" "$dest/d3.LICENSE"
echo "vendor-js: d3.min.js (libjs-d3 $version, sha256 $sha256) -> $dest" >&2
