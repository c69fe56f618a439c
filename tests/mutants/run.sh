#!/usr/bin/env bash
# Mutation check: each tests/mutants/*.patch is a small deliberate bug that breaks one promise. Each
# is applied alone to a scratch copy of the tree (never to this tree), built, and the tests named on
# its "Tests:" line run (e2e:FILE.test.js, unit:test_NAME); the mutant must make one of them fail.
# Prints one line per mutant, "caught by <test>: <first failure message>" or "SURVIVED", and exits
# non-zero if any survives or does not apply. `make mutants`; MUTANTS="a b" runs only those.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/carpool-mutants.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
export CARPOOL_TEST_TIMEOUT_MS="${CARPOOL_TEST_TIMEOUT_MS:-30000}" # a hang fails within 30 s

# The scratch copy: tracked and untracked (not ignored) files as they are now, no build output.
(cd "$root" && git ls-files -co --exclude-standard -z | xargs -0 tar cf - --) | tar xf - -C "$scratch"
if [ ! -d "$root/tests/e2e/node_modules" ]; then
	echo "mutants: run 'make tests/e2e/node_modules' first" >&2
	exit 2
fi
ln -s "$root/tests/e2e/node_modules" "$scratch/tests/e2e/node_modules"
log="$scratch/mutants.log"

build() { make -C "$scratch" -j2 all "$@" >>"$log" 2>&1; }

# Runs one test ("e2e:FILE" or "unit:test_NAME") in the scratch tree. Returns 0 when it passes;
# when it fails, prints "<test> <failing case>: <message>".
run_test() {
	local kind="${1%%:*}" name="${1#*:}" out
	if [ "$kind" = unit ]; then
		build "bin/$name" || { echo "unit:$name (does not build)"; return 1; }
		out="$("$scratch/bin/$name" 2>&1)" && return 0
		printf 'unit:%s %s: %s\n' "$name" \
			"$(grep -m1 -o '\[  FAILED  \] [a-z_0-9]*' <<<"$out" | sed 's/.*\] //')" \
			"$(grep -m1 -iE 'error|fail|differ|!=' <<<"$out" | sed -E 's/^\[  ERROR   \] --- //' | cut -c1-200)"
		return 1
	fi
	out="$(cd "$scratch/tests/e2e" && node --test --test-concurrency=1 --test-timeout=120000 --test-force-exit \
		--test-reporter=tap "$name" 2>&1)" && return 0
	printf 'e2e:%s "%s": %s\n' "$name" \
		"$(grep -m1 -E '^ *not ok [0-9]+ - ' <<<"$out" | sed -E 's/^ *not ok [0-9]+ - //')" \
		"$(awk '/^ *error: /{ v=$0; sub(/^ *error: */, "", v); if (v !~ /^[|>]-?$/) { print v; exit } getline; sub(/^ */, ""); print; exit }' <<<"$out" | cut -c1-200)"
	return 1
}

tests_of() { sed -n 's/^Tests: //p' "$1"; }

echo "mutants: building the scratch copy in $scratch"
build || { echo "mutants: the unmutated tree does not build (see $log)"; cat "$log" | tail -20; exit 2; }

mutants=()
for p in "$here"/*.patch; do
	n="$(basename "$p" .patch)"
	if [ -n "${MUTANTS:-}" ] && ! grep -qw -- "$n" <<<"$MUTANTS"; then continue; fi
	mutants+=("$n")
done

# The named tests must pass on the unmutated tree, or a "caught" would mean nothing.
all_tests="$(for n in "${mutants[@]}"; do tests_of "$here/$n.patch" | tr ' ' '\n'; done | sort -u)"
for t in $all_tests; do
	if ! r="$(run_test "$t")"; then
		echo "mutants: $t fails WITHOUT a mutant: $r"
		exit 2
	fi
done
echo "mutants: the tests pass on the unmutated tree: $(echo $all_tests)"

bad=0
for n in "${mutants[@]}"; do
	p="$here/$n.patch"
	if ! patch -d "$scratch" -p1 --forward --quiet <"$p" >>"$log" 2>&1; then
		echo "$n: DOES NOT APPLY (update the patch to the code)"
		bad=1
		continue
	fi
	caught=""
	built=1
	build || built=0
	if [ $built = 1 ]; then
		for t in $(tests_of "$p"); do
			if ! r="$(run_test "$t")"; then
				caught="$r"
				break
			fi
		done
	fi
	patch -d "$scratch" -p1 -R --quiet <"$p" >>"$log" 2>&1
	if [ $built = 0 ]; then
		echo "$n: DOES NOT BUILD (a mutant must compile: update the patch)"
		bad=1
	elif [ -n "$caught" ]; then
		echo "$n: caught by $caught"
	else
		echo "$n: SURVIVED ($(tests_of "$p"))"
		bad=1
	fi
done
exit $bad
