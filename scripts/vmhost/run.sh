#!/usr/bin/env bash
# A first VM-host step of issue 16 (not yet `corridor lab up --hosts vm`):
# two QEMU VM hosts booting Debian's 6.1 kernel, the agent installed from
# the .deb (bin/corridor_*.deb, `make dist`) and started by scripts/vmhost/init
# as corridor-agent.service would (restarted when it dies), joined to a
# server on a bridge in a namespace of this machine, one with kernel
# WireGuard, one with the wireguard module withheld (wireguard-go); then
# `corridor apply` of examples/shop.yaml and `corridor verify shop`.
# Run as root from the repository's root; it removes what it made.
#   scripts/vmhost/run.sh [KERNEL_DEB]
# KERNEL_DEB defaults to the image tests' cache (apt-get download
# linux-image-amd64 there first).
set -euo pipefail
root=$(pwd)
deb=$(ls "$root"/bin/corridor_*_amd64.deb | tail -1)
kdeb=${1:-$(ls /tmp/corridor-test-cache/debs/linux-image-*.deb | tail -1)}
work=$(mktemp -d /tmp/corvmhost.XXXXXX)
ns=corvmh-$$
br=corvmhbr tap=corvmhtap
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	sleep 2
	ip netns del "$ns" 2>/dev/null || true
	echo "logs kept in $work" >&2
}
trap cleanup EXIT

# The host image: modules (with busybox's depmod), busybox, the package.
dpkg-deb -x "$kdeb" "$work/k"
ver=$(ls "$work/k/lib/modules")
m=$work/k/lib/modules/$ver
r=$work/root
mkdir -p "$r/lib/modules/$ver/kernel/drivers/net" "$r/bin"
cp -a "$m/kernel/net" "$m/kernel/lib" "$m/kernel/crypto" "$m/kernel/arch" "$r/lib/modules/$ver/kernel/"
(cd "$m/kernel/drivers/net" && tar cf - --exclude=wireless --exclude=ethernet --exclude=usb --exclude=can \
	--exclude=wwan --exclude=ieee802154 --exclude=hamradio --exclude=wan --exclude=phy --exclude=dsa --exclude=pcs --exclude=mdio .) |
	(cd "$r/lib/modules/$ver/kernel/drivers/net" && tar xf -)
cp -a "$m/kernel/drivers/virtio" "$m/kernel/drivers/char" "$r/lib/modules/$ver/kernel/drivers/"
cp "$m"/modules.builtin "$m"/modules.order "$m"/modules.builtin.modinfo "$r/lib/modules/$ver/"
(cd "$r" && busybox depmod -b . "$ver")
cp /bin/busybox "$r/bin/busybox"
ln -sf busybox "$r/bin/sh"
dpkg-deb -x "$deb" "$r"
install -m 0755 "$root/scripts/vmhost/init" "$r/init"

# The control plane on a bridge in a namespace of this machine.
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add "$br" type bridge
ip -n "$ns" addr add 198.18.162.1/24 dev "$br"
ip -n "$ns" link set "$br" up
mkdir -p "$work/srv"
ip netns exec "$ns" "$r/usr/bin/corridor" server --data-dir "$work/srv" --listen 198.18.162.1:7443 --advertise 198.18.162.1 >"$work/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -f "$work/srv/join.token" ] && break; sleep 0.2; done
install -m 0644 "$work/srv/ca.crt" "$r/etc/corridor/ca.crt"
install -m 0600 "$work/srv/join.token" "$r/etc/corridor/join.token"
cat >"$r/etc/corridor/agent.yaml" <<YAML
server: [https://198.18.162.1:7443]
join-token-file: /etc/corridor/join.token
ca: /etc/corridor/ca.crt
state-dir: /var/lib/corridor/agent
underlay-iface: eth0
listen: ":7444"
YAML
(cd "$r" && find . | busybox cpio -o -H newc >"$work/initrd.cpio" 2>/dev/null)

for i in 1 2; do
	extra=""
	[ "$i" = 2 ] && extra="vmhost.nowg=1"
	ip -n "$ns" tuntap add dev "$tap$i" mode tap
	ip -n "$ns" link set "$tap$i" master "$br" up
	date +%s.%N >"$work/boot$i.t0"
	ip netns exec "$ns" qemu-system-x86_64 -machine q35 -accel tcg -m 1024 -smp 1 -nographic -no-reboot \
		-kernel "$work/k/boot/vmlinuz-$ver" -initrd "$work/initrd.cpio" \
		-append "console=ttyS0 quiet panic=-1 no_timer_check vmhost.addr=198.18.162.$((i + 1))/24 vmhost.gw=198.18.162.1 vmhost.name=vm$i $extra" \
		-netdev "tap,id=n0,ifname=$tap$i,script=no,downscript=no" -device "virtio-net-pci,netdev=n0,mac=52:54:00:16:00:0$i" \
		-serial "file:$work/console$i.log" -monitor none -display none >"$work/qemu$i.out" 2>&1 &
	pids+=($!)
done
c=(--server https://198.18.162.1:7443 --token "$(cat "$work/srv/admin.token")" --ca "$work/srv/ca.crt")
cli() { ip netns exec "$ns" "$r/usr/bin/corridor" "$@" "${c[@]}"; }
for _ in $(seq 600); do
	[ "$(cli get servers -o json 2>/dev/null | grep -o '"state": *"ready"' | wc -l)" = 2 ] && break
	sleep 1
done
cli get servers
grep -a -h -E "kernel WireGuard|wireguard-go datapath" "$work"/console*.log | head -2 || true
cli apply -f "$root/examples/shop.yaml" --wait --timeout 10m
cli get tasks
cli verify shop
