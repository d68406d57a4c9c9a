#!/usr/bin/env bash
# Installs what the tests need on a Debian machine, once: the list lives
# here only (`make deps`, which `make test` runs first, and .ci/run both
# call this script). Packages already present are not touched, so a
# developer's machine pays one dpkg query per package.
set -euo pipefail

# iproute2, nftables, wireguard-tools, iperf3, tcpdump: tests read and check
#   the kernel's state with the tools an operator would use.
# qemu-system-x86, busybox-static, xz-utils, cpio: VM guests and their image;
#   the image builder also fetches linux-image-amd64 with `apt-get download`.
# e2fsprogs: mkfs.ext4 makes the VM hosts' state disks (internal/vmhost).
# postgresql: the sample's PostgreSQL db tier (examples/shop-pg.yaml).
# chromium: the web console's browser tests (headless, driven by chromedp).
# systemd, man-db: `systemd-analyze verify` checks the package's units and
#   the man pages their Documentation= names (internal/dist).
pkgs=(iproute2 nftables wireguard-tools iperf3 tcpdump qemu-system-x86 busybox-static xz-utils cpio postgresql chromium systemd man-db e2fsprogs)

if ! command -v dpkg >/dev/null; then
	echo "deps: not a Debian machine (no dpkg); install by hand: ${pkgs[*]}" >&2
	exit 0
fi
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done

# The image builder's `apt-get download` needs package lists; a fresh
# machine (or container) may have none.
need_update=${CI:-}
if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ]; then need_update=1; fi
if [ ${#missing[@]} -gt 0 ] || [ -n "$need_update" ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: missing ${missing[*]:-package lists}; run as root (sudo make deps)" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
fi
if [ ${#missing[@]} -gt 0 ]; then
	# The tests run their own PostgreSQL servers: Debian's main cluster is
	# not wanted.
	mkdir -p /etc/postgresql-common/createcluster.d
	echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/corridor-tests.conf
	echo "deps: installing ${missing[*]}" >&2
	apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v staticcheck >/dev/null && ! [ -x "$(go env GOPATH)/bin/staticcheck" ]; then
	echo "deps: installing staticcheck" >&2
	go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi
