#!/bin/sh
# Compiler benchmarks, base against this tree, interleaved in one run
# (issue 19, item 5). Usage: bench/compile/run.sh BASE_COMMIT [ROUNDS]
# Builds both test binaries first, then runs ROUNDS (default 5) rounds of
# base then new, one -count each, and prints the load before each run. The
# benchmarks of the new tree's bench_test.go are run in both trees (the
# base tree gets a copy of it), so that both measure the same thing.
set -eu
base=$1
rounds=${2:-5}
bench=${BENCH:-'Compile$|RecompileOneChange|PlanOutputFloor'}
benchtime=${BENCHTIME:-3x}
root=$(git rev-parse --show-toplevel)
tmp=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$tmp/base" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
git -C "$root" worktree add --detach "$tmp/base" "$base" >/dev/null
# The base tree measured with the new tree's benchmarks (they only use
# the exported API and the cache's fields).
cp "$root/internal/compile/bench_test.go" "$tmp/base/internal/compile/bench_test.go"
(cd "$tmp/base" && go test -c -o "$tmp/base.test" ./internal/compile)
(cd "$root" && go test -c -o "$tmp/new.test" ./internal/compile)
for i in $(seq "$rounds"); do
	for v in base new; do
		echo "# round $i $v load $(cut -d' ' -f1-3 /proc/loadavg)"
		(cd "$root/internal/compile" && "$tmp/$v.test" -test.run '^$' -test.bench "$bench" -test.benchtime "$benchtime" -test.benchmem -test.count 1) | grep '^Benchmark'
	done
done
