#!/bin/busybox sh
# Corridor VM host init (PID 1; internal/vmhost). The image is a Debian
# kernel's modules, busybox and the corridor package installed by dpkg; the
# host's own files (/etc/vmhost.conf, /etc/corridor/agent.yaml, the CA and
# join token) come in a second initramfs archive appended to the first.
# It mounts the state disk (/dev/vda) on /var/lib/corridor, brings the
# underlay up from /etc/vmhost.conf, then runs the agent the way
# corridor-agent.service does (its ExecStart, RestartSec, UMask and
# StateDirectory, read from the unit the package installed), again each
# time it exits.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run
say() { /bin/busybox echo "corridor-vmhost: $*"; }
if [ ! -e /.switched ]; then
	if [ ! -f /etc/vmhost.conf ]; then
		# A probe boot (vm.ProbeKVM): proves that the kernel ran init.
		say "no host configuration: probe boot, powering off"
		/bin/busybox poweroff -f
	fi
	# Sealed netns guests pivot_root, which the initramfs root does not
	# allow: move to a tmpfs root first, as a real host's disk would be.
	/bin/busybox mkdir -p /newroot
	/bin/busybox mount -t tmpfs -o size=70% tmpfs /newroot
	for d in bin etc init lib usr var sbin; do [ -e /$d ] && /bin/busybox cp -a /$d /newroot/; done
	/bin/busybox touch /newroot/.switched
	exec /bin/busybox switch_root /newroot /init
fi
/bin/busybox mkdir -p /sbin /usr/sbin /usr/bin
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/net
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
. /etc/vmhost.conf
say "booted $VMHOST_NAME at $(cut -d' ' -f1 /proc/uptime)s"
if [ "$VMHOST_WIREGUARD" = withheld ]; then
	# Withheld: not even the kernel's module autoload can find it.
	rm -rf /lib/modules/*/kernel/drivers/net/wireguard
	say "wireguard module withheld"
fi
for m in $VMHOST_MODULES; do
	modprobe "$m" 2>/dev/null || say "modprobe $m failed"
done
hostname "$VMHOST_NAME"
mkdir -p /var/lib/corridor /var/log
i=0
while [ ! -b /dev/vda ]; do
	i=$((i + 1))
	[ $i -gt 200 ] && { say "error: no state disk /dev/vda"; break; }
	sleep 0.1
done
# sync: a power cut loses nothing the agent has written.
mount -t ext4 -o sync,dirsync /dev/vda /var/lib/corridor || say "error: mount of the state disk failed"
ip link set lo up
ip link set eth0 mtu "$VMHOST_MTU" up
ip addr add "$VMHOST_ADDR" dev eth0
ip route add default via "$VMHOST_GW"
for r in $VMHOST_ROUTES; do
	ip route add "${r%@*}" via "${r#*@}"
done
say "network up: $VMHOST_ADDR"

unit=/usr/lib/systemd/system/corridor-agent.service
[ -f "$unit" ] || unit=/lib/systemd/system/corridor-agent.service
exec_start=$(sed -n 's/^ExecStart=//p' "$unit" | tail -1)
restart_sec=$(sed -n 's/^RestartSec=//p' "$unit" | tail -1 | tr -d 's')
umask_v=$(sed -n 's/^UMask=//p' "$unit" | tail -1)
state_dir=$(sed -n 's/^StateDirectory=//p' "$unit" | tail -1)
state_mode=$(sed -n 's/^StateDirectoryMode=//p' "$unit" | tail -1)
[ -n "$exec_start" ] || { say "error: no ExecStart in $unit"; exec sh; }
[ -n "$state_dir" ] && mkdir -p "/var/lib/$state_dir" && chmod "${state_mode:-0755}" "/var/lib/$state_dir"
[ -n "$umask_v" ] && umask "$umask_v"
n=0
while :; do
	n=$((n + 1))
	say "starting agent (start $n) at $(cut -d' ' -f1 /proc/uptime)s: $exec_start"
	$exec_start </dev/null >/dev/console 2>&1
	say "agent exited with status $?; restarting in ${restart_sec:-1}s (Restart=always)"
	sleep "${restart_sec:-1}"
done
