#!/usr/bin/env bash
# Data-path benchmark: throughput (iperf3, 1 and 4 TCP streams), TCP
# round-trip latency and machine CPU per GB between two simulated servers,
# for six cases measured side by side and interleaved:
#
#   veth       raw veth: server namespace to server namespace over the lab's
#              underlay bridge (no tunnel)
#   vxlan      raw VXLAN between the same two server namespaces (a unicast
#              VXLAN device made by hand: the plain path's encapsulation
#              without Corridor's guest hop, marks and rules)
#   plain      a Corridor plain path, guest to guest over VXLAN (corv0)
#   encrypted  a Corridor encrypted path, guest to guest over WireGuard
#              (corw0, wireguard-go in a `corridor datapath wireguard` process)
#   wggo       standalone wireguard-go between the same two server namespaces
#   nebula     Nebula between the same two server namespaces
#
# Usage (root):  bench/datapath/run.sh [--record]
# Environment:   DURATION=10 (s per iperf3 run)  ROUNDS=5  MTUS="1500 9000"
#                RR_COUNT=2000  TOOLS=/tmp/corridor-bench-tools
#                PREFIX=corbn-  UNDERLAY=198.18.200.0/24
#                CASES="veth vxlan plain encrypted wggo nebula"
#                ENDPOINT_CGROUP=guest (the iperf3 server of the non-Corridor
#                cases runs in a cgroup made like a Corridor guest's, beside
#                them; "root": in the caller's cgroup, as before)
#                RATE=1G (also one 1-stream run per case and round at this fixed
#                offered rate, iperf3 -b: CPU per GB compared at equal
#                throughput; empty, the default: no such run)
#                KEEP=1 (leave the lab up at the end, for poking around)
#                PROFILE=dir (perf record -a of each case's round-1 runs, with
#                reports by command and by symbol, into dir; skews those runs)
#                CORRIDOR_BIN=path (default: build ./cmd/corridor, else bin/corridor)
#                CHART=file.svg (also draw the Gbit/s of every case as a bar
#                chart, one panel per MTU, with the ratios under each; the
#                results it is drawn from are written to file.tsv)
# --record appends the markdown report to bench/RESULTS.md.
#
# Everything made here (a lab, processes, namespaces, devices) is removed at
# the end and on Ctrl-C; processes are ended by the PIDs recorded here.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
record=0
for a in "$@"; do
	case $a in
	--record) record=1 ;;
	-h | --help) sed -n '2,35p' "$0"; exit 0 ;;
	*) echo "unknown argument $a (want --record)" >&2; exit 2 ;;
	esac
done
[[ $(id -u) == 0 ]] || { echo "run.sh needs root: it makes network namespaces" >&2; exit 1; }
# Close every descriptor inherited beyond stdin, stdout and stderr: the lab's
# server, agents and datapath processes started below would inherit them and
# keep them open as long as they live. `flock /tmp/corridor-bench.lock
# run.sh` passes its lock this way, so a lab left up with KEEP=1 held the
# machine-wide bench lock until it was taken down (flock keeps its own copy,
# so the lock is still held while this script runs).
for fd in /proc/$$/fd/*; do
	fd=${fd##*/}
	if ((fd > 2 && fd != 255)); then eval "exec $fd>&-" 2>/dev/null || true; fi
done

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-5}
MTUS=${MTUS:-1500 9000}
RR_COUNT=${RR_COUNT:-2000}
TOOLS=${TOOLS:-/tmp/corridor-bench-tools}
PREFIX=${PREFIX:-corbn-}
UNDERLAY=${UNDERLAY:-198.18.200.0/24}
CASES=${CASES:-veth vxlan plain encrypted wggo nebula}
ENDPOINT_CGROUP=${ENDPOINT_CGROUP:-guest}
RATE=${RATE:-}
NEBULA_VERSION=v1.11.1

work=$(mktemp -d /tmp/corridor-bench-dp.XXXXXX)
results=$work/results.tsv # mtu case round metric value
: >"$results"
pids=()
labdir=""
cgdirs=() # cgroups made here, removed at the end
log() { echo "[$(date +%T)] $*" >&2; }

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	log "cleaning up"
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$p" 2>/dev/null || true
	done
	pids=()
	rm_cgroups
	if [[ -n $labdir && -z ${KEEP:-} ]]; then
		"$TOOLS/corridor" lab down --dir "$labdir" >/dev/null 2>&1 || log "lab down failed: remove with: corridor lab down --dir $labdir"
	fi
	[[ -z ${KEEP:-} ]] && rm -rf "$work"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- tools -----------------------------------------------------------------
mkdir -p "$TOOLS"
log "building the helper and wireguard-go (version from go.mod) into $TOOLS"
(cd "$repo" && go build -o "$TOOLS/datapath" ./bench/datapath &&
	go build -o "$TOOLS/wireguard-go" golang.zx2c4.com/wireguard)
if [[ -n ${CORRIDOR_BIN:-} ]]; then
	cp "$CORRIDOR_BIN" "$TOOLS/corridor"
elif ! (cd "$repo" && go build -o "$TOOLS/corridor" ./cmd/corridor); then
	[[ -x $repo/bin/corridor ]] || exit 1
	log "the tree does not build; using $repo/bin/corridor as it is"
	cp "$repo/bin/corridor" "$TOOLS/corridor"
fi
if ! "$TOOLS/nebula" -version 2>/dev/null | grep -q "${NEBULA_VERSION#v}"; then
	log "installing nebula $NEBULA_VERSION"
	GOBIN=$TOOLS go install "github.com/slackhq/nebula/cmd/nebula@$NEBULA_VERSION" "github.com/slackhq/nebula/cmd/nebula-cert@$NEBULA_VERSION"
fi
C=$TOOLS/corridor
H=$TOOLS/datapath

# ---- helpers ---------------------------------------------------------------
# busy_jiffies prints the machine's user+nice+system+irq+softirq+steal
# jiffies so far (all CPUs).
busy_jiffies() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
hz=$(getconf CLK_TCK)

# proc_ticks PID...: user+system clock ticks the processes used so far
# (all their threads); a PID that is gone counts 0.
proc_ticks() {
	local s=0 p t
	for p in "$@"; do
		t=$(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null) || t=0
		s=$((s + ${t:-0}))
	done
	echo "$s"
}

# guest_like_cgroup PID NAME: make a cpu cgroup NAME beside the one PID
# (a Corridor guest's process) runs in, with the same CPU weight and limit,
# and print its directory (the caller adds it to cgdirs). The Corridor cases' iperf3 servers run in their
# guest's cgroup, below the agent's parent cgroup whose weight all guests
# share; giving the other cases' servers the same place keeps the scheduler
# out of the comparison (on a loaded machine it decides more than the path).
guest_like_cgroup() {
	local pid=$1 name=$2 rel root dir f
	if rel=$(awk -F: '$2 ~ /(^|,)cpu(,|$)/ {print $3}' "/proc/$pid/cgroup") && [[ -n $rel ]]; then
		root=/sys/fs/cgroup/cpu
		dir=$root$(dirname "$rel")/$name
		mkdir -p "$dir"
		for f in cpu.shares cpu.cfs_period_us cpu.cfs_quota_us; do cat "$root$rel/$f" >"$dir/$f"; done
	else
		rel=$(awk -F: '$1 == "0" {print $3}' "/proc/$pid/cgroup")
		root=/sys/fs/cgroup
		dir=$root$(dirname "$rel")/$name
		mkdir -p "$dir"
		for f in cpu.weight cpu.max; do cat "$root$rel/$f" >"$dir/$f"; done
	fi
	echo "$dir"
}

# rm_cgroups removes the cgroups made here, once their last process (the
# helper's iperf3 child ends just after the helper) has gone.
rm_cgroups() {
	local d
	for d in "${cgdirs[@]}"; do
		for _ in $(seq 50); do rmdir "$d" 2>/dev/null && break; sleep 0.1; done
		[[ -d $d ]] && log "could not remove cgroup $d"
	done
	cgdirs=()
}

ns_run() { # ns_run NETNS cmd...: run in a named namespace
	local ns=$1; shift
	ip netns exec "$ns" "$@"
}

# start_bg NETNS LOGFILE cmd...: start a process in a namespace, remember its
# PID (ip netns exec execs the command, so the PID is the command's).
start_bg() {
	local ns=$1 logf=$2; shift 2
	ip netns exec "$ns" "$@" >"$logf" 2>&1 &
	pids+=($!)
}

wait_rr() { # wait_rr NETNS ADDR:PORT: until one echo round trip succeeds
	local ns=$1 to=$2
	for _ in $(seq 150); do
		ns_run "$ns" "$H" rr --to "$to" --count 1 --warmup 0 --timeout 1s >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	log "no echo from $to in namespace $ns"
	return 1
}

# measure MTU CASE ROUND NETNS ADDR IPERF_PORT ECHO_PORT [TUNNEL_PID...]
# TUNNEL_PIDs: the user-space tunnel processes of the case (both ends),
# whose own CPU per GB is reported beside the machine's.
measure() {
	local mtu=$1 case=$2 round=$3 ns=$4 addr=$5 iport=$6 eport=$7 streams j0 j1 t0 t1 out bps bytes
	shift 7
	local tpids=("$@")
	printf '%s\t%s\t%s\tload1\t%s\n' "$mtu" "$case" "$round" "$(cut -d' ' -f1 /proc/loadavg)" >>"$results"
	for streams in 1 4; do
		local pp=""
		if [[ -n ${PROFILE:-} && $round == 1 ]]; then
			# Sample every CPU (cpu-clock: this VM has no hardware PMU).
			perf record -q -e cpu-clock -F 999 -a -g -o "$PROFILE/$mtu-$case-p$streams.data" -- sleep "$DURATION" 2>/dev/null &
			pp=$!
		fi
		j0=$(busy_jiffies) t0=$(proc_ticks "${tpids[@]}")
		out=$(ns_run "$ns" iperf3 -c "$addr" -p "$iport" -t "$DURATION" -P "$streams" --json) || {
			log "iperf3 $case P$streams failed"; continue; }
		j1=$(busy_jiffies) t1=$(proc_ticks "${tpids[@]}")
		if [[ -n $pp ]]; then
			wait "$pp" || true
			perf report -q -i "$PROFILE/$mtu-$case-p$streams.data" --no-children --sort comm,dso,sym --percent-limit 0.7 -g none \
				>"$PROFILE/$mtu-$case-p$streams.txt" 2>/dev/null || true
			perf report -q -i "$PROFILE/$mtu-$case-p$streams.data" --no-children --sort comm --percent-limit 0.5 -g none \
				>"$PROFILE/$mtu-$case-p$streams-comm.txt" 2>/dev/null || true
		fi
		bps=$(jq '.end.sum_received.bits_per_second' <<<"$out")
		bytes=$(jq '.end.sum_received.bytes' <<<"$out")
		printf '%s\t%s\t%s\tgbps_p%s\t%s\n' "$mtu" "$case" "$round" "$streams" "$(awk -v b="$bps" 'BEGIN{printf "%.3f", b/1e9}')" >>"$results"
		# Machine CPU seconds (both servers' ends, the tunnel processes and
		# anything else running) per GB received.
		printf '%s\t%s\t%s\tcpu_s_per_gb_p%s\t%s\n' "$mtu" "$case" "$round" "$streams" \
			"$(awk -v d=$((j1 - j0)) -v hz="$hz" -v by="$bytes" 'BEGIN{printf "%.3f", (d/hz)/(by/1e9)}')" >>"$results"
		if ((${#tpids[@]})); then
			printf '%s\t%s\t%s\ttun_s_per_gb_p%s\t%s\n' "$mtu" "$case" "$round" "$streams" \
				"$(awk -v d=$((t1 - t0)) -v hz="$hz" -v by="$bytes" 'BEGIN{printf "%.3f", (d/hz)/(by/1e9)}')" >>"$results"
		fi
		printf '%s\t%s\t%s\tretr_p%s\t%s\n' "$mtu" "$case" "$round" "$streams" "$(jq '.end.sum_sent.retransmits // 0' <<<"$out")" >>"$results"
	done
	if [[ -n $RATE ]]; then
		# One stream at a fixed offered rate: CPU per GB at equal
		# throughput. A path's CPU per GB falls as its throughput rises
		# (fuller batches, fewer wake-ups per byte), so the saturated
		# runs above cannot tell a costlier process from a slower path.
		j0=$(busy_jiffies) t0=$(proc_ticks "${tpids[@]}")
		if out=$(ns_run "$ns" iperf3 -c "$addr" -p "$iport" -t "$DURATION" -b "$RATE" --json); then
			j1=$(busy_jiffies) t1=$(proc_ticks "${tpids[@]}")
			bps=$(jq '.end.sum_received.bits_per_second' <<<"$out")
			bytes=$(jq '.end.sum_received.bytes' <<<"$out")
			printf '%s\t%s\t%s\tgbps_rate\t%s\n' "$mtu" "$case" "$round" "$(awk -v b="$bps" 'BEGIN{printf "%.3f", b/1e9}')" >>"$results"
			printf '%s\t%s\t%s\tcpu_s_per_gb_rate\t%s\n' "$mtu" "$case" "$round" \
				"$(awk -v d=$((j1 - j0)) -v hz="$hz" -v by="$bytes" 'BEGIN{printf "%.3f", (d/hz)/(by/1e9)}')" >>"$results"
			if ((${#tpids[@]})); then
				printf '%s\t%s\t%s\ttun_s_per_gb_rate\t%s\n' "$mtu" "$case" "$round" \
					"$(awk -v d=$((t1 - t0)) -v hz="$hz" -v by="$bytes" 'BEGIN{printf "%.3f", (d/hz)/(by/1e9)}')" >>"$results"
			fi
		else
			log "iperf3 $case at $RATE failed"
		fi
	fi
	out=$(ns_run "$ns" "$H" rr --to "$addr:$eport" --count "$RR_COUNT") || { log "rr $case failed"; return 0; }
	printf '%s\t%s\t%s\trr_us\t%s\n' "$mtu" "$case" "$round" "$(sed -n 's/.*median=\([0-9.]*\).*/\1/p' <<<"$out")" >>"$results"
	log "  $case round $round: $(grep -P "^$mtu\t$case\t$round\t(gbps|rr)" "$results" | cut -f4,5 | tr '\t\n' '= ')"
}

app_yaml() { # app_yaml APP SRC DST ENCRYPT
	cat <<EOF
apiVersion: corridor/v1
kind: App
name: $1
classes:
  - name: $2
    tasks: 1
    guest: {runtime: netns, command: [$H, serve, --iperf3-port, "5201", --echo, ":5202"]}
    resources: {cpu: "1", memory: 128Mi}
    ports: [{port: 5201}, {port: 5202}]
  - name: $3
    tasks: 1
    guest: {runtime: netns, command: [$H, serve, --iperf3-port, "5201", --echo, ":5202"]}
    resources: {cpu: "1", memory: 128Mi}
    ports: [{port: 5201}, {port: 5202}]
rules:
  - {from: $2, to: $3, ports: [5201, 5202], encrypt: $4}
EOF
}

# ---- one suite per underlay MTU ----------------------------------------------
suite() {
	local mtu=$1 tmtu=$(($1 - 80))
	labdir=$work/lab-$mtu
	log "MTU $mtu: lab up (2 servers, prefix $PREFIX, underlay $UNDERLAY)"
	eval "$("$C" lab up --servers 2 --dir "$labdir" --prefix "$PREFIX" --underlay "$UNDERLAY" --mtu "$mtu" --binary "$C" -o env 2>"$work/labup.log")" ||
		{ cat "$work/labup.log" >&2; return 1; }
	export CORRIDOR_SERVER CORRIDOR_TOKEN CORRIDOR_CA
	# Names the lab derives from the prefix: server namespaces and the
	# WireGuard device of s1 (unique on the machine).
	local s1=${PREFIX}s1 s2=${PREFIX}s2 wgdev=${PREFIX%-}w1 base=${UNDERLAY%.*} a1 a2
	a1=$base.11 a2=$base.12

	# Corridor: two apps, each with one task per server (spread placement,
	# and 1 CPU each on 2-CPU servers leaves no other choice).
	app_yaml bnplain a b false >"$work/plain.yaml"
	app_yaml bnenc c d true >"$work/enc.yaml"
	# --wait: until the tasks run, both hosts applied their states and the
	# encrypted path has handshaken (the same wait as the demo and tests).
	{ cat "$work/plain.yaml"; echo ---; cat "$work/enc.yaml"; } >"$work/apps.yaml"
	"$C" apply -f "$work/apps.yaml" --wait --timeout 60s >/dev/null 2>"$work/wait.log" ||
		{ cat "$work/wait.log" >&2; return 1; }
	local tasks
	tasks=$("$C" get tasks -o json)
	jq -r '.[] | "\(.id) on \(.server) \(.address) \(.status.state)"' <<<"$tasks" >&2
	addr_of() { jq -r --arg id "$1" '.[] | select(.id == $id) | .address' <<<"$tasks"; }
	server_of() { jq -r --arg id "$1" '.[] | select(.id == $id) | .server' <<<"$tasks"; }
	[[ $(server_of bnplain/a/0) != "$(server_of bnplain/b/0)" ]] || { log "bnplain a and b share a server"; return 1; }
	[[ $(server_of bnenc/c/0) != "$(server_of bnenc/d/0)" ]] || { log "bnenc c and d share a server"; return 1; }
	# A guest's namespace: "cor-<scope>.<app>-<class>-<n>", the scope being
	# its lab server's namespace (guest.NetnsNameIn, lab.GuestScope), or
	# "cor-<app>-<class>-<n>" from agents before scoped names.
	guest_ns() {
		local task=$1 name=${1//\//-} scope n
		scope=$PREFIX$(server_of "$task")
		for n in "cor-$scope.$name" "cor-$name"; do
			[[ -e /run/netns/$n ]] && { echo "$n"; return 0; }
		done
		log "no namespace for guest $task (looked for cor-$scope.$name and cor-$name)"
		return 1
	}
	local pns ens bns paddr eaddr
	pns=$(guest_ns bnplain/a/0) && ens=$(guest_ns bnenc/c/0) && bns=$(guest_ns bnplain/b/0) || return 1
	paddr=$(addr_of bnplain/b/0) eaddr=$(addr_of bnenc/d/0)

	# Our own servers for veth, vxlan, wggo and nebula: one helper in s2
	# (iperf3 on 5301, echo on 5302 on every address of s2), in a cgroup
	# made like the guests' (ENDPOINT_CGROUP=guest; see guest_like_cgroup).
	if [[ $ENDPOINT_CGROUP == guest ]]; then
		local gpid cg
		gpid=$(ip netns pids "$bns" | head -n1)
		[[ -n $gpid ]] || { log "no process in guest $bns"; return 1; }
		cg=$(guest_like_cgroup "$gpid" "${PREFIX}bench-$mtu")
		cgdirs+=("$cg") # here: guest_like_cgroup ran in a subshell
		log "MTU $mtu: the non-Corridor cases' servers run in $cg"
		# Join the cgroup before ip netns exec (it hides /sys/fs/cgroup).
		sh -c 'echo $$ >"$0/cgroup.procs" && exec ip netns exec "$@"' "$cg" "$s2" \
			"$H" serve --iperf3-port 5301 --echo :5302 >"$work/srv-$mtu.log" 2>&1 &
		pids+=($!)
	else
		start_bg "$s2" "$work/srv-$mtu.log" "$H" serve --iperf3-port 5301 --echo :5302
	fi

	# Raw VXLAN by hand between s1 and s2: unicast to the other's underlay
	# address, the same options as corv0 (no learning) but its own VNI and
	# UDP port; MTU as corv0's (underlay less 50).
	local vni=4343 vport=4790
	ns_run "$s1" ip link add corbnvx1 type vxlan id $vni local "$a1" remote "$a2" dstport $vport dev eth0 nolearning
	ns_run "$s2" ip link add corbnvx2 type vxlan id $vni local "$a2" remote "$a1" dstport $vport dev eth0 nolearning
	ns_run "$s1" ip link set corbnvx1 mtu $(($1 - 50)) up
	ns_run "$s2" ip link set corbnvx2 mtu $(($1 - 50)) up
	ns_run "$s1" ip addr add 100.127.252.1/24 dev corbnvx1
	ns_run "$s2" ip addr add 100.127.252.2/24 dev corbnvx2

	# Standalone wireguard-go, names unique on the machine (UAPI sockets).
	local k1 k2
	k1=$(wg genkey) k2=$(wg genkey)
	start_bg "$s1" "$work/wg1.log" env WG_PROCESS_FOREGROUND=1 "$TOOLS/wireguard-go" -f corbnwg1
	start_bg "$s2" "$work/wg2.log" env WG_PROCESS_FOREGROUND=1 "$TOOLS/wireguard-go" -f corbnwg2
	local wgpids=("${pids[@]: -2}")
	for i in $(seq 50); do [[ -S /var/run/wireguard/corbnwg1.sock && -S /var/run/wireguard/corbnwg2.sock ]] && break; sleep 0.1; done
	ns_run "$s1" wg set corbnwg1 private-key <(echo "$k1") listen-port 51901 peer "$(wg pubkey <<<"$k2")" endpoint "$a2:51901" allowed-ips 100.127.250.2/32
	ns_run "$s2" wg set corbnwg2 private-key <(echo "$k2") listen-port 51901 peer "$(wg pubkey <<<"$k1")" endpoint "$a1:51901" allowed-ips 100.127.250.1/32
	ns_run "$s1" ip link set corbnwg1 mtu "$tmtu" up
	ns_run "$s2" ip link set corbnwg2 mtu "$tmtu" up
	ns_run "$s1" ip addr add 100.127.250.1/24 dev corbnwg1
	ns_run "$s2" ip addr add 100.127.250.2/24 dev corbnwg2

	# Nebula: a CA, two hosts; s1 is the lighthouse. Tunnel MTU as wggo.
	local nd=$work/nebula-$mtu
	mkdir -p "$nd"
	(cd "$nd" && "$TOOLS/nebula-cert" ca -name corridor-bench >/dev/null &&
		"$TOOLS/nebula-cert" sign -name s1 -networks 100.127.251.1/24 &&
		"$TOOLS/nebula-cert" sign -name s2 -networks 100.127.251.2/24)
	local n
	for n in 1 2; do
		cat >"$nd/s$n.yaml" <<EOF
pki: {ca: $nd/ca.crt, cert: $nd/s$n.crt, key: $nd/s$n.key}
static_host_map:
  "100.127.251.1": ["$a1:4243"]
lighthouse:
  am_lighthouse: $([[ $n == 1 ]] && echo true || echo false)
  hosts: [$([[ $n == 2 ]] && echo '"100.127.251.1"')]
listen: {host: 0.0.0.0, port: 4243}
punchy: {punch: false}
tun: {dev: corbneb$n, mtu: $tmtu}
logging: {level: warning}
firewall:
  outbound: [{port: any, proto: any, host: any}]
  inbound: [{port: any, proto: any, host: any}]
EOF
	done
	start_bg "$s1" "$work/neb1.log" "$TOOLS/nebula" -config "$nd/s1.yaml"
	start_bg "$s2" "$work/neb2.log" "$TOOLS/nebula" -config "$nd/s2.yaml"
	local nebpids=("${pids[@]: -2}")
	# Corridor's own tunnel processes: the lab's two datapath processes.
	local encpids
	mapfile -t encpids < <(pgrep -f -- "datapath wireguard --name ${PREFIX%-}w[0-9]+ ")
	((${#encpids[@]} == 2)) || { log "want 2 datapath processes, found ${#encpids[@]}"; return 1; }

	log "MTU $mtu: waiting for every path to echo"
	wait_rr "$s1" "$a2:5302"
	wait_rr "$s1" "100.127.252.2:5302"
	wait_rr "$pns" "$paddr:5202"
	wait_rr "$ens" "$eaddr:5202"
	wait_rr "$s1" "100.127.250.2:5302"
	wait_rr "$s1" "100.127.251.2:5302"

	# What the guests and devices actually got, for the report.
	{
		echo "mtu $mtu: guest eth0 $(ns_run "$pns" cat /sys/class/net/eth0/mtu)," \
			"corv0 $(ns_run "$s1" cat /sys/class/net/corv0/mtu)," \
			"corw0 ($wgdev) $(ns_run "$s1" cat "/sys/class/net/$wgdev/mtu")," \
			"underlay eth0 $(ns_run "$s1" cat /sys/class/net/eth0/mtu)," \
			"raw vxlan $(ns_run "$s1" cat /sys/class/net/corbnvx1/mtu)," \
			"wggo $(ns_run "$s1" cat /sys/class/net/corbnwg1/mtu), nebula $(ns_run "$s1" cat /sys/class/net/corbneb1/mtu)"
	} >>"$work/mtus.txt"
	# Flow offload changes the plain path's figures: say what the agents
	# reported (on, off, unavailable: docs/operations.md).
	"$C" get servers -o json | jq -r --arg mtu "$mtu" \
		'"mtu \($mtu): flow offload " + ([.[] | "\(.spec.name) \(.flowOffload // "not reported")"] | join(", "))' >>"$work/offload.txt"

	local r c
	for r in $(seq "$ROUNDS"); do
		for c in $CASES; do
			case $c in
			veth) measure "$mtu" veth "$r" "$s1" "$a2" 5301 5302 ;;
			vxlan) measure "$mtu" vxlan "$r" "$s1" 100.127.252.2 5301 5302 ;;
			plain) measure "$mtu" plain "$r" "$pns" "$paddr" 5201 5202 ;;
			encrypted) measure "$mtu" encrypted "$r" "$ens" "$eaddr" 5201 5202 "${encpids[@]}" ;;
			wggo) measure "$mtu" wggo "$r" "$s1" 100.127.250.2 5301 5302 "${wgpids[@]}" ;;
			nebula) measure "$mtu" nebula "$r" "$s1" 100.127.251.2 5301 5302 "${nebpids[@]}" ;;
			*) log "unknown case $c"; return 1 ;;
			esac
		done
	done

	# End this suite's processes by PID, then the lab.
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	pids=()
	rm_cgroups
	if [[ -z ${KEEP:-} ]]; then
		"$C" lab down --dir "$labdir" >/dev/null 2>&1
		labdir=""
	fi
}

load0=$(cut -d' ' -f1-3 /proc/loadavg)
for m in $MTUS; do suite "$m"; done
load1=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- report ----------------------------------------------------------------
report=$work/report.md
python3 - "$results" "$DURATION" "$ROUNDS" "$RATE" >"$report" <<'EOF'
import sys, statistics, collections
path, duration, rounds, rate = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
v = collections.defaultdict(list)
for line in open(path):
    mtu, case, rnd, metric, val = line.rstrip("\n").split("\t")
    try:
        v[(mtu, case, metric)].append(float(val))
    except ValueError:
        pass
mtus = sorted({k[0] for k in v}, key=int)
cases = [c for c in ["veth", "vxlan", "plain", "encrypted", "wggo", "nebula"] if any(k[1] == c for k in v)]
med = lambda xs: statistics.median(xs) if xs else float("nan")
def cell(xs, fmt):
    # n/rounds: how many runs the median covers (a failed iperf3 run is
    # left out of it, and said so here).
    if not xs:
        return f"- (0/{rounds} runs)"
    n = "" if len(xs) == int(rounds) else f", {len(xs)}/{rounds} runs"
    return f"**{fmt.format(med(xs))}** ({fmt.format(min(xs))}-{fmt.format(max(xs))}{n})"
for mtu in mtus:
    print(f"#### Underlay MTU {mtu}\n")
    print(f"Median **bold** (min-max) of {rounds} interleaved rounds, iperf3 {duration} s per run; a cell whose median covers fewer runs (failed runs are left out) says how many.\n")
    print("Machine CPU s/GB: all busy CPU of the machine over the bytes received (both ends, the neighbours' work too); tunnel CPU s/GB: only the two user-space tunnel processes of the case.\n")
    print("| case | Gbit/s, 1 stream | Gbit/s, 4 streams | TCP RR median µs | machine CPU s/GB, 1 stream | machine CPU s/GB, 4 streams | tunnel CPU s/GB, 1 stream | tunnel CPU s/GB, 4 streams | retransmits/run, 1 stream (median) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in cases:
        g = lambda m: v.get((mtu, c, m), [])
        tun = lambda m: cell(g(m), '{:.2f}') if g(m) else "-"
        print(f"| {c} | {cell(g('gbps_p1'), '{:.2f}')} | {cell(g('gbps_p4'), '{:.2f}')} | {cell(g('rr_us'), '{:.0f}')} | "
              f"{cell(g('cpu_s_per_gb_p1'), '{:.2f}')} | {cell(g('cpu_s_per_gb_p4'), '{:.2f}')} | "
              f"{tun('tun_s_per_gb_p1')} | {tun('tun_s_per_gb_p4')} | {med(g('retr_p1')):.0f} |")
    print()
    loads = [x for k, xs in v.items() if k[0] == mtu and k[2] == "load1" for x in xs]
    if loads:
        print(f"1-minute load average at the start of each case's runs: median {med(loads):.1f}, min {min(loads):.1f}, max {max(loads):.1f} ({len(loads)} samples; the machine has 2 CPUs).\n")
    ratios = [("plain / raw vxlan", "plain", "vxlan", "≥ 0.90"),
              ("plain / veth", "plain", "veth", "(kept for reference)"),
              ("raw vxlan / veth", "vxlan", "veth", "(reference)"),
              ("encrypted / wggo", "encrypted", "wggo", "≥ 1.00 (stretch 1.25)"),
              ("encrypted / nebula", "encrypted", "nebula", "≥ 3.00")]
    print("| ratio of medians | 1 stream | 4 streams | target |")
    print("|---|---|---|---|")
    for name, a, b, target in ratios:
        row = []
        for m in ("gbps_p1", "gbps_p4"):
            x, y = v.get((mtu, a, m)), v.get((mtu, b, m))
            row.append(f"{med(x)/med(y):.2f}" if x and y and med(y) > 0 else "-")
        print(f"| {name} | {row[0]} | {row[1]} | {target} |")
    print()
    if rate and any(k[0] == mtu and k[2] == "gbps_rate" for k in v):
        print(f"At a fixed offered rate ({rate}bit/s, 1 stream, iperf3 -b): CPU per GB at equal throughput (a case that could not reach the rate shows a lower Gbit/s).\n")
        print("| case | Gbit/s reached | machine CPU s/GB | tunnel CPU s/GB |")
        print("|---|---|---|---|")
        for c in cases:
            g = lambda m: v.get((mtu, c, m), [])
            if not g("gbps_rate"):
                continue
            tun = cell(g("tun_s_per_gb_rate"), '{:.2f}') if g("tun_s_per_gb_rate") else "-"
            print(f"| {c} | {cell(g('gbps_rate'), '{:.2f}')} | {cell(g('cpu_s_per_gb_rate'), '{:.2f}')} | {tun} |")
        x, y = v.get((mtu, "encrypted", "tun_s_per_gb_rate")), v.get((mtu, "wggo", "tun_s_per_gb_rate"))
        if x and y:
            print(f"\nTunnel CPU per GB at {rate}bit/s, encrypted / wggo: {med(x)/med(y):.2f} (1.00: the same work per byte).")
        print()
EOF
{
	echo "Load average (1, 5, 15 min) before: $load0; after: $load1."
	echo
	echo "Device MTUs seen (bytes):"
	echo
	sed 's/^/- /' "$work/mtus.txt"
	echo
	echo "Flow offload of the plain path, as the agents reported it:"
	echo
	sed 's/^/- /' "$work/offload.txt"
	echo
} >>"$report"
cat "$report"
if [[ -n ${CHART:-} ]]; then
	# The results go beside the chart, to draw it again (datapath chart).
	cp "$results" "${CHART%.svg}.tsv"
	"$TOOLS/datapath" chart --results "$results" -o "$CHART" \
		--title "Guest to guest, two servers: $(uname -r), $(date -u +'%Y-%m-%d %H:%M UTC'), iperf3 ${DURATION} s" &&
		log "chart written to $CHART, its results to ${CHART%.svg}.tsv"
fi
if [[ $record == 1 ]]; then
	{
		echo
		echo "### Data path run of $(date -u +'%Y-%m-%d %H:%M UTC') (\`bench/datapath/run.sh\`, DURATION=$DURATION ROUNDS=$ROUNDS)"
		echo
		cat "$report"
	} >>"$repo/bench/RESULTS.md"
	log "appended to bench/RESULTS.md"
fi
