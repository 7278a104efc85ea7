#!/usr/bin/env bash
# Worker throughput with the item side kept per partition (FUSIONREC_MODEL_ITEM_SYNC_MS=0, the layout before the
# shared item side) and shared (the default), alternating in one run on this checkout:
#
#   bash benchmarks/compare_item_side.sh [ROUNDS]      (default 2; ~2.5 minutes per benchmark run)
#
# Each run is benchmarks/bench_worker.py on the Taobao slice (full stack, one worker); the key lines are printed
# side by side at the end. Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/worker_lines.sh
ROUNDS=${1:-2}
DATA=${DATA:-../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz}
PY=$(pwd)/.venv/bin/python
out=$(mktemp -d)
declare -a rows
for round in $(seq 1 "$ROUNDS"); do
    for sync in 0 1000; do
        echo "round $round: item_sync_ms=$sync" >&2
        log="$out/worker-$sync-$round.txt"
        FUSIONREC_MODEL_ITEM_SYNC_MS=$sync "$PY" benchmarks/bench_worker.py "$DATA" >"$log" 2>&1 \
            || echo "(run failed; see $log)" >&2
        figures=$(worker_lines "$log")
        rss=$(grep -m1 "worker RSS" "$log" | sed 's/.*worker RSS \([0-9,]* MB\).*/\1/' || true)
        rows+=("$round|$sync|$figures|$rss")
    done
done
printf '\n%s\n' "Taobao slice, 110,300 events, full stack, 1 worker process; events/s"
printf '%-6s %-14s %12s %14s %12s %10s %10s\n' round item_sync_ms worker in-process "raw consume" River "RSS"
for row in "${rows[@]}"; do
    IFS='|' read -r r s w i c v m <<<"$row"
    printf '%-6s %-14s %12s %14s %12s %10s %10s\n' "$r" "$s" "$w" "$i" "$c" "$v" "$m"
done
echo "logs in $out" >&2
