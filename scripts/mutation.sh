#!/bin/sh
# Mutation checks of the data plane's fail-closed guards (issue 11): the
# data-plane tests are built once with the tag corridor_mutation, then run
# once with every guard in place (they must pass) and once per guard with
# that guard left out (CORRIDOR_MUTATE=<guard>): the tests named for the
# guard must fail, and fail in the named subtest. The guards and their
# catching tests are listed in docs/architecture.md ("Guards and the
# tests that catch their absence"); keep the two lists in step.
#
# Needs root (the tests make network namespaces). Takes about a minute
# and a half. CORRIDOR_BIN: the corridor binary for wireguard-go.
set -eu
cd "$(dirname "$0")/.."
GO=${GO:-go}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bin="$tmp/dataplane.test"
$GO test -c -tags corridor_mutation -o "$bin" ./internal/dataplane

# guard  catching subtests (regexp under TestDataplane)
cases='
forward-drops      fail-closed
unreachable-routes fail-closed
device-check       encrypted-pair-refused-in-plain|injection
fwmark-rule        encrypted
vtep-source        vtep-spoof
egress-snat        egress
ingress-snat       ingress
guest-routes       flush
guest-source       guest-source
'
echo "$cases" | while read -r guard subs; do
	[ -n "$guard" ] || continue
	echo "$guard $subs"
done >"$tmp/cases"
all=$(awk '{print $2}' "$tmp/cases" | tr '\n' '|' | sed 's/|$//')

cd internal/dataplane # as go test runs a package's tests
echo "== every guard in place: TestDataplane/($all) must pass"
if ! "$bin" -test.count=1 -test.run "^TestDataplane\$/^($all)\$" >"$tmp/base.log" 2>&1; then
	cat "$tmp/base.log"
	echo "mutation: the tests fail with every guard in place"
	exit 1
fi

status=0
while read -r guard subs; do
	echo "== guard $guard off: TestDataplane/($subs) must fail"
	if CORRIDOR_MUTATE=$guard "$bin" -test.count=1 -test.run "^TestDataplane\$/^($subs)\$" >"$tmp/$guard.log" 2>&1; then
		cat "$tmp/$guard.log"
		echo "MUTANT SURVIVED: with guard $guard off, TestDataplane/($subs) passed"
		status=1
		continue
	fi
	failed=$(grep -E -- "--- FAIL: TestDataplane/($subs)( |\$)" "$tmp/$guard.log" | sed 's/^ *--- FAIL: //; s/ (.*//' | tr '\n' ' ')
	if [ -z "$failed" ]; then
		cat "$tmp/$guard.log"
		echo "mutation: with guard $guard off the run failed, but not in TestDataplane/($subs)"
		status=1
		continue
	fi
	echo "   caught by: $failed"
	grep -E "^\s+\S+_test\.go:[0-9]+: " "$tmp/$guard.log" | head -3 | sed 's/^/   /'
done <"$tmp/cases"
exit $status
