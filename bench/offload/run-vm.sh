#!/usr/bin/env bash
# Data-path benchmarks in a VM booting Debian's kernel, which has nftables
# flowtables and WireGuard where this machine's kernel may not: runs
# BenchmarkPlainPath (internal/dataplane: raw VXLAN, Corridor's plain path
# with flow offload, the plain path without it) and BenchmarkEncryptedPath
# (kernel WireGuard by hand between the two hosts, Corridor's encrypted
# path on kernel WireGuard), 1 and 4 streams each.
#
# The VM runs under TCG where KVM does not work: its figures are then of an
# emulated CPU, many times slower than the machine's. Only ratios between
# the cases of one run mean anything, and even they only indicate: TCG
# slows some instructions more than others.
#
# Usage (root):  bench/offload/run-vm.sh
# Environment:   VMHOST_IMAGE=dir   a VM host image (vmlinux, host-base.cpio),
#                                   as `corridor lab up --hosts vm` or the VM
#                                   host e2e test leave it (default: the first
#                                   of /var/cache/corridor/vmhost and
#                                   /tmp/corridor-test-cache/vmhost-image)
#                BENCHTIME=3x  MB=32 (per operation)  CPUS=2  MEMORY=2048
#                BENCH='PlainPath|EncryptedPath' (the -test.bench pattern)
#                KVM=auto|on|off (auto: KVM where the lab's probe found it
#                works on this boot, kvm-probe.json in the image directory;
#                else TCG)
#                VERBOSE=1 (the whole console, not only the benchmark's lines)
# It prints the benchmark's output and removes its work directory.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
case ${1:-} in -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;; esac
[[ $(id -u) == 0 ]] || { echo "run-vm.sh needs root (the benchmark makes namespaces in the VM; QEMU may need /dev/kvm)" >&2; exit 1; }
BENCHTIME=${BENCHTIME:-3x}
BENCH=${BENCH:-PlainPath|EncryptedPath}
MB=${MB:-32}
CPUS=${CPUS:-2}
MEMORY=${MEMORY:-2048}
KVM=${KVM:-auto}
if [[ -z ${VMHOST_IMAGE:-} ]]; then
	for d in /var/cache/corridor/vmhost /tmp/corridor-test-cache/vmhost-image; do
		[[ -f $d/vmlinux && -f $d/host-base.cpio ]] && { VMHOST_IMAGE=$d; break; }
	done
fi
[[ -n ${VMHOST_IMAGE:-} && -f $VMHOST_IMAGE/vmlinux && -f $VMHOST_IMAGE/host-base.cpio ]] || {
	echo "no VM host image: run 'corridor lab up --hosts vm --package ...' once (or the VM host e2e test), or set VMHOST_IMAGE" >&2
	exit 1
}
for tool in qemu-system-x86_64 cpio ip; do
	command -v "$tool" >/dev/null || { echo "$tool not installed (scripts/deps.sh installs it)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/corridor-offload-vm.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/bench" "$root/usr/local/sbin" "$root/usr/bin"

echo "building the benchmark and corridor (static)" >&2
(cd "$repo" && CGO_ENABLED=0 go test -c -o "$root/bench/dataplane.test" ./internal/dataplane)
(cd "$repo" && CGO_ENABLED=0 go build -o "$root/usr/bin/corridor" ./cmd/corridor)

# iproute2's ip (the benchmark's namespaces need `ip netns`, which busybox
# lacks), with the libraries it links.
ipbin=$(command -v ip)
cp "$ipbin" "$root/usr/local/sbin/ip"
for lib in $(ldd "$ipbin" | awk '/=>/ {print $3; next} $1 ~ /^\// {print $1}'); do
	mkdir -p "$root$(dirname "$lib")"
	cp -L "$lib" "$root$lib"
done

cat >"$root/bench-init" <<'EOF'
#!/bin/busybox sh
# PID 1 of the benchmark VM: a tmpfs root (ip netns exec remounts), the
# modules, then the benchmark; the output goes to the console.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run
if [ ! -e /.switched ]; then
	/bin/busybox mkdir -p /newroot
	/bin/busybox mount -t tmpfs -o size=70% tmpfs /newroot
	for d in bin etc lib lib64 usr var sbin bench bench-init; do [ -e /$d ] && /bin/busybox cp -a /$d /newroot/; done
	/bin/busybox touch /newroot/.switched
	exec /bin/busybox switch_root /newroot /bench-init
fi
/bin/busybox mkdir -p /sbin /usr/sbin /usr/bin
/bin/busybox --install -s
export PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/net /run/netns
mount -t tmpfs tmpfs /run
mkdir -p /run/netns
mount -t tmpfs tmpfs /tmp
for m in tun veth vxlan wireguard nf_tables nf_conntrack nf_flow_table nf_flow_table_inet nft_flow_offload nft_ct; do
	modprobe "$m" 2>/dev/null || echo "bench-init: modprobe $m failed"
done
echo "bench-init: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) CPUs"
cd /tmp
CORRIDOR_BIN=/usr/bin/corridor CORRIDOR_BENCH_MB=$(cat /bench/mb) /bench/dataplane.test -test.run '^$' \
	-test.bench "$(cat /bench/pattern)" -test.benchtime "$(cat /bench/benchtime)" -test.v 2>&1
echo "bench-init: done rc=$?"
poweroff -f
EOF
chmod +x "$root/bench-init"
echo "$MB" >"$root/bench/mb"
echo "$BENCHTIME" >"$root/bench/benchtime"
echo "$BENCH" >"$root/bench/pattern"
(cd "$root" && find . | cpio -o -H newc --quiet) >"$work/extra.cpio"
cat "$VMHOST_IMAGE/host-base.cpio" "$work/extra.cpio" >"$work/initrd.cpio"

# KVM only where the lab found that it runs this image's kernel on this
# boot (internal/vmhost.Accel's probe, cached in the image directory by
# `corridor lab up --hosts vm` and the VM host tests): /dev/kvm can exist
# and still fail a real guest (nested virtualisation).
field() { grep -o "\"$2\": *\"[^\"]*\"" "$1" 2>/dev/null | head -n1 | sed 's/.*"\([^"]*\)"$/\1/'; }
accel=(-accel tcg)
case $KVM in
on) accel=(-accel kvm -cpu host) ;;
auto)
	probe=$VMHOST_IMAGE/kvm-probe.json
	if [[ $(field "$probe" accel) == kvm && $(field "$probe" bootID) == "$(cat /proc/sys/kernel/random/boot_id)" &&
		$(field "$probe" kernel) == "$(field "$VMHOST_IMAGE/vmhost-image.json" hash)" ]]; then
		accel=(-accel kvm -cpu host)
	fi
	;;
esac
echo "booting Debian's kernel (${accel[*]}, $CPUS CPUs, $MEMORY MiB): the benchmark runs in it" >&2
qemu-system-x86_64 "${accel[@]}" -smp "$CPUS" -m "$MEMORY" -nographic -no-reboot \
	-kernel "$VMHOST_IMAGE/vmlinux" -initrd "$work/initrd.cpio" \
	-append "console=ttyS0 quiet panic=-1 rdinit=/bench-init" </dev/null |
	tr -d '\r' | if [[ -n ${VERBOSE:-} ]]; then cat; else
		grep -E '^(bench-init|Benchmark|    pathbench|    [a-z_]+_test.go|goos|goarch|cpu|pkg|PASS|FAIL|ok|---|panic)'
	fi
