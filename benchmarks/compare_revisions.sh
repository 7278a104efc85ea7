#!/usr/bin/env bash
# Worker throughput and list freshness of an earlier revision and of this checkout, side by side in one run.
#
#   bash benchmarks/compare_revisions.sh [REV] [ROUNDS]      (defaults: 42bf20a, the last commit before the
#                                                              one-import-root layout; 2 rounds)
#   ONLY=freshness bash benchmarks/compare_revisions.sh REV    (bench_freshness.py only: ~1 minute per run)
#
# Each round runs bench_worker.py (Taobao slice, full stack) and bench_freshness.py (1,000 events/s, no profile)
# on REV and then on this checkout, so that both see the same machine state; the key lines of every run are
# printed at the end. REV runs from a temporary git worktree: on PYTHONPATH for revisions of the old layout
# (top-level models/, streams/, ...), and through benchmarks/revision_shim (which points the editable install's
# fusionrec.* packages at the worktree, for the benchmark and the worker it starts) for the one-import-root layout;
# this checkout runs through the installed (editable) package. Run it on a quiet machine: it takes ~10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/worker_lines.sh
REV=${1:-42bf20a}
ROUNDS=${2:-2}
DATA=${DATA:-../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz}
PY=$(pwd)/.venv/bin/python
shim=$(pwd)/benchmarks/revision_shim
out=$(mktemp -d)
tree=$(mktemp -d)/rev
git worktree add -q --detach "$tree" "$REV"
trap 'git worktree remove --force "$tree"; echo "logs kept in $out" >&2' EXIT
data=$(realpath "$DATA")

run() {  # run NAME DIR SCRIPT ARGS...
    local name=$1 dir=$2 script=$3; shift 3
    local log="$out/$name-$(date +%s%N).txt"
    if [ "$dir" = here ]; then
        "$PY" "benchmarks/$script" "$data" "$@" >"$log" 2>&1 || echo "($name failed; see $log)" >&2
    else
        (cd "$dir" && PYTHONPATH="$shim:$dir" FR_REVISION_TREE="$dir" "$PY" "benchmarks/$script" "$data" "$@") >"$log" 2>&1 \
            || echo "($name failed; see $log)" >&2
    fi
    echo "$log"
}

declare -a rows
for round in $(seq 1 "$ROUNDS"); do
    for side in rev here; do
        dir=$tree; label=$REV
        [ "$side" = here ] && { dir=here; label="this checkout ($(git rev-parse --short HEAD))"; }
        echo "round $round: $label" >&2
        figures="|||"
        if [ "${ONLY:-}" != freshness ]; then
            w=$(run "worker-$side" "$dir" bench_worker.py)
            figures=$(worker_lines "$w")
        fi
        f=$(run "fresh-$side" "$dir" bench_freshness.py --no-profile)
        cpu=$(grep -m1 "worker CPU" "$f" | sed 's/worker CPU: \([0-9.]* s\) over.*= \([0-9]* %\).*/\1 (\2)/' || true)
        lists=$(grep -m1 "lists published" "$f" | sed 's/.*; \([0-9,]* lists\/s\).*/\1/' || true)
        fresh=$(grep -m1 "user list published (freshness)" "$f" | sed 's/.*freshness) *//; s/ \{2,\}.*//' || true)
        rows+=("$round|$label|$figures|$fresh, $lists, CPU $cpu")
    done
done

printf '\n%s\n' "Taobao slice; worker: 110,300 events, full stack, 1 process; freshness: 30,000 events at 1,000 ev/s"
printf '%-6s %-28s %12s %14s %12s %10s  %s\n' round revision "worker ev/s" "in-process" "raw consume" River \
    "freshness p50 / p99 / p99.9 ms, lists/s, worker CPU"
for row in "${rows[@]}"; do
    IFS='|' read -r r l w i c v f <<<"$row"
    printf '%-6s %-28s %12s %14s %12s %10s  %s\n' "$r" "$l" "$w" "$i" "$c" "$v" "$f"
done
