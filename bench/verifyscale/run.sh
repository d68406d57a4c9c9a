#!/usr/bin/env bash
# Verify time against app size (issue 19): on a lab of its own, apply one app
# of two classes (front -> back on 5432, encrypted) with TASKS tasks each,
# wait until it settles, and time `corridor verify` (sampled, fixed seed),
# then `corridor delete app` until the last guest's namespace is gone.
#
#   sudo bench/verifyscale/run.sh 5 50 60      # apps of 10, 100 and 120 tasks
#
# Environment: CORRIDOR_BIN (default: build into $TMPDIR), PREFIX (lab
# namespace prefix, default corvs<pid>-), UNDERLAY (default 198.18.119.0/24),
# SERVERS (default 3), SEED (default 1), EXTRA (more verify flags, e.g.
# "--exhaustive --max-checks 100000"), CPU and MEMORY (each task's resources,
# default 10m and 16Mi: lower them so that 1,000 tasks fit three servers).
set -euo pipefail
cd "$(dirname "$0")/../.."
sizes=("${@:-5 50 60}")
PREFIX=${PREFIX:-corvs$$-}
UNDERLAY=${UNDERLAY:-198.18.119.0/24}
SERVERS=${SERVERS:-3}
SEED=${SEED:-1}
EXTRA=${EXTRA:-}
CPU=${CPU:-10m}
MEMORY=${MEMORY:-16Mi}
work=$(mktemp -d /tmp/verifyscale.XXXXXX)
bin=${CORRIDOR_BIN:-$work/corridor}
[ -x "$bin" ] || go build -o "$bin" ./cmd/corridor
dir=$work/lab
cleanup() { "$bin" lab down --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

eval "$("$bin" lab up --dir "$dir" --prefix "$PREFIX" --underlay "$UNDERLAY" --servers "$SERVERS" -o env)"
printf '| tasks | servers | apply to settled | verify | delete to gone | checks | coverage |\n|---|---|---|---|---|---|---|\n'
for n in ${sizes[@]}; do
	cat >"$work/app.yaml" <<YAML
apiVersion: corridor/v1
kind: App
name: big$n
classes:
  - name: front
    tasks: $n
    guest: {runtime: netns, command: [corridor, sample, db, --listen, ":80"]}
    resources: {cpu: $CPU, memory: $MEMORY}
    ports: [{name: http, port: 80}]
  - name: back
    tasks: $n
    guest: {runtime: netns, command: [corridor, sample, db, --listen, ":5432"]}
    resources: {cpu: $CPU, memory: $MEMORY}
    ports: [{name: sql, port: 5432}]
rules:
  - {from: front, to: back, ports: [5432], encrypt: true}
YAML
	t0=$(date +%s.%N)
	"$bin" apply -f "$work/app.yaml" --wait --timeout 15m >/dev/null
	t1=$(date +%s.%N)
	# shellcheck disable=SC2086
	"$bin" verify "big$n" --seed "$SEED" $EXTRA -o json >"$work/verify.json" 2>"$work/verify.err" || { cat "$work/verify.err" >&2; exit 1; }
	t2=$(date +%s.%N)
	cov=$(grep covered "$work/verify.err" | sed "s/^verify big$n: //")
	checks=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(len(r["checks"]))' "$work/verify.json")
	"$bin" delete app "big$n" >/dev/null
	# The guests' namespaces are /run/netns/cor-<lab prefix>...: gone when
	# every agent has stopped and removed its guests of the app.
	gone_by=$(($(date +%s) + 900))
	while compgen -G "/run/netns/cor-${PREFIX}*" >/dev/null; do
		[ "$(date +%s)" -lt "$gone_by" ] || { echo "guests of big$n still there 15 min after delete:" /run/netns/cor-"${PREFIX}"* >&2; exit 1; }
		sleep 0.2
	done
	t3=$(date +%s.%N)
	printf '| %d | %d | %.1f s | %.1f s | %.1f s | %s | %s |\n' $((2 * n)) "$SERVERS" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" "$(echo "$t3 - $t2" | bc)" "$checks" "$cov"
done
