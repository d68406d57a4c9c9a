#!/bin/sh
# Compiler benchmarks, base against this tree, interleaved in one run
# (issue 19, item 5). Usage: bench/compile/run.sh BASE_COMMIT [ROUNDS]
# Builds both test binaries first, then runs ROUNDS (default 5) rounds of
# base then new, one -count each, and prints the load before each run, then
# a summary: each benchmark's median (min-max) per tree and new / base. The
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
# The base tree measured with the new tree's benchmarks (they use the
# exported API and the cache's fields). A base older than the fields the
# new file names (before cacheState) keeps its own benchmarks, said here:
# they measure the same compiles, through that tree's own cache copy.
cp "$root/internal/compile/bench_test.go" "$tmp/base/internal/compile/bench_test.go"
if ! (cd "$tmp/base" && go test -c -o "$tmp/base.test" ./internal/compile 2>"$tmp/base.err"); then
	echo "# the new bench_test.go does not build in $base ($(head -1 "$tmp/base.err")): the base runs its own" >&2
	git -C "$tmp/base" checkout -q -- internal/compile/bench_test.go
	(cd "$tmp/base" && go test -c -o "$tmp/base.test" ./internal/compile)
fi
(cd "$root" && go test -c -o "$tmp/new.test" ./internal/compile)
for i in $(seq "$rounds"); do
	for v in base new; do
		echo "# round $i $v load $(cut -d' ' -f1-3 /proc/loadavg)"
		(cd "$root/internal/compile" && "$tmp/$v.test" -test.run '^$' -test.bench "$bench" -test.benchtime "$benchtime" -test.benchmem -test.count 1) | grep '^Benchmark'
	done
done | tee "$tmp/runs.txt"
# The summary: per benchmark and tree, the median (min-max) of the rounds'
# wall and CPU time per op, and new / base of the medians.
echo
awk '
/^# round/ { tree = $4; next }
/^Benchmark/ {
	name = $1; trees[tree] = 1; names[name] = 1
	for (i = 3; i < NF; i++) {
		if ($(i+1) == "ns/op") wall[name, tree, ++nw[name, tree]] = $i / 1e6
		if ($(i+1) == "cpu-ns/op") cpu[name, tree, ++nc[name, tree]] = $i / 1e6
	}
}
function med(a, key, n,    i, j, t, v) {
	for (i = 1; i <= n; i++) v[i] = a[key, i]
	for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j-1] > v[j]; j--) { t = v[j]; v[j] = v[j-1]; v[j-1] = t }
	lo = v[1]; hi = v[n]
	return n % 2 ? v[(n+1)/2] : (v[n/2] + v[n/2+1]) / 2
}
END {
	printf "%-44s %-30s %-30s %s\n", "benchmark (ms per op, median (min-max))", "base wall", "new wall", "new/base"
	for (name in names) {
		b = med(wall, name SUBSEP "base", nw[name, "base"]); bs = sprintf("%.2f (%.2f-%.2f)", b, lo, hi)
		n = med(wall, name SUBSEP "new", nw[name, "new"]); ns = sprintf("%.2f (%.2f-%.2f)", n, lo, hi)
		printf "%-44s %-30s %-30s %.2f\n", name, bs, ns, n / b
		if (nc[name, "base"] && nc[name, "new"]) {
			b = med(cpu, name SUBSEP "base", nc[name, "base"]); n = med(cpu, name SUBSEP "new", nc[name, "new"])
			printf "%-44s %-30s %-30s %.2f\n", "  (CPU, all threads)", sprintf("%.2f", b), sprintf("%.2f", n), n / b
		}
	}
}' "$tmp/runs.txt"
