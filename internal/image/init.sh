#!/bin/busybox sh
# Corridor guest init (PID 1). The host passes everything on the kernel
# command line (see docs/guests.md, "Kernel command line"):
#   corridor.addr=A  corridor.gw=G  corridor.gwmac=M  corridor.mtu=N
#   corridor.cmd=B   (base64 of a sh script: exports, then exec of the task)
# It prints "corridor-guest: ready" on the console once eth0 is up, runs
# the task, and powers the VM off when the task ends. An ACPI power button
# press (QMP system_powerdown) sends the task SIGTERM first.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /usr/bin /usr/sbin /sbin /var/log
/bin/busybox --install -s
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp

say() { echo "corridor-guest: $*"; }
die() { say "error: $*"; sync; poweroff -f; }

for m in $(cat /lib/modules/order); do
	insmod "/lib/modules/$m.ko" || say "warning: insmod $m failed"
done

addr= gw=169.254.1.1 gwmac= mtu=1420 dns= cmd=
for p in $(cat /proc/cmdline); do
	case "$p" in
	corridor.addr=*) addr="${p#corridor.addr=}" ;;
	corridor.gw=*) gw="${p#corridor.gw=}" ;;
	corridor.gwmac=*) gwmac="${p#corridor.gwmac=}" ;;
	corridor.mtu=*) mtu="${p#corridor.mtu=}" ;;
	corridor.dns=*) dns="${p#corridor.dns=}" ;;
	corridor.cmd=*) cmd="${p#corridor.cmd=}" ;;
	esac
done
[ -n "$addr" ] || die "no corridor.addr= on the kernel command line"
[ -n "$cmd" ] || die "no corridor.cmd= on the kernel command line"

i=0
while [ ! -e /sys/class/net/eth0 ]; do
	i=$((i + 1))
	[ $i -gt 100 ] && die "no eth0 (is virtio_net in the initramfs?)"
	sleep 0.1
done
ip link set lo up
ip link set eth0 mtu "$mtu" up || die "eth0 up failed"
ip addr add "$addr/32" dev eth0 || die "address $addr failed"
ip route add "$gw/32" dev eth0 scope link || die "route to $gw failed"
# Pinned: proxy ARP on the host answers for the gateway only when the host
# has a route to it, which a lab server namespace may lack.
[ -n "$gwmac" ] && { arp -i eth0 -s "$gw" "$gwmac" || say "warning: arp entry for $gw failed"; }
ip route add default via "$gw" dev eth0 onlink || die "default route failed"

# The operator's resolvers (spec resolvers), reached through the host's
# egress like any allowed outside destination.
if [ -n "$dns" ]; then
	: > /etc/resolv.conf
	for r in $(echo "$dns" | tr ',' ' '); do
		echo "nameserver $r" >> /etc/resolv.conf
	done
fi

# The power button (QMP system_powerdown) ends the task gracefully.
mkdir -p /etc/acpi/PWRF
printf '#!/bin/sh\nkill -TERM 1\n' > /etc/acpi/PWRF/00000080
chmod 755 /etc/acpi/PWRF/00000080
acpid -c /etc/acpi -l /var/log/acpid.log 2>/dev/null

# The host's verify probes from this guest come through the virtio-serial
# port corridor.probe, answered by corridor when the image carries it.
if [ -x /usr/bin/corridor ]; then
	for d in /sys/class/virtio-ports/*; do
		[ "$(cat "$d/name" 2>/dev/null)" = corridor.probe ] && /usr/bin/corridor probe-responder --device "/dev/${d##*/}" &
	done
fi

echo "$cmd" | base64 -d > /run/task.sh || die "corridor.cmd is not base64"
say "ready addr=$addr"
cd /
sh /run/task.sh &
pid=$!
trap 'say "power button: stopping the task"; kill -TERM $pid 2>/dev/null' TERM
while :; do
	wait $pid
	rc=$?
	kill -0 $pid 2>/dev/null || break
done
say "task exited with status $rc"
sync
poweroff -f
