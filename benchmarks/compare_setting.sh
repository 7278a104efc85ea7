#!/usr/bin/env bash
# Worker throughput under two or more values of one setting, alternating in one run on this checkout:
#
#   bash benchmarks/compare_setting.sh VARIABLE "VALUE VALUE ..." [ROUNDS]     (default 2 rounds)
#   bash benchmarks/compare_setting.sh FUSIONREC_RANKER_LEARNED "false true" 2   # the learned ranker's cost
#   bash benchmarks/compare_item_side.sh [ROUNDS]                                  # the shared item side's
#
# Each run is benchmarks/bench_worker.py on the Taobao slice (full stack, one worker, ~2.5 minutes); the key lines
# are printed side by side at the end. Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/worker_lines.sh
VAR=${1:?usage: compare_setting.sh VARIABLE "VALUES" [ROUNDS]}
read -r -a VALUES <<<"${2:?usage: compare_setting.sh VARIABLE \"VALUES\" [ROUNDS]}"
ROUNDS=${3:-2}
DATA=${DATA:-../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz}
PY=$(pwd)/.venv/bin/python
out=$(mktemp -d)
declare -a rows
for round in $(seq 1 "$ROUNDS"); do
    for value in "${VALUES[@]}"; do
        echo "round $round: $VAR=$value" >&2
        log="$out/worker-$value-$round.txt"
        env "$VAR=$value" "$PY" benchmarks/bench_worker.py "$DATA" >"$log" 2>&1 || echo "(run failed; see $log)" >&2
        figures=$(worker_lines "$log")
        rss=$(grep -m1 "worker RSS" "$log" | sed 's/.*worker RSS \([0-9,]* MB\).*/\1/' || true)
        rows+=("$round|$value|$figures|$rss")
    done
done
printf '\n%s\n' "$(basename "$DATA"), full stack, 1 worker process; events/s"
printf '%-6s %-28s %12s %14s %12s %10s %10s\n' round "$VAR" worker in-process "raw consume" River "RSS"
for row in "${rows[@]}"; do
    IFS='|' read -r r s w i c v m <<<"$row"
    printf '%-6s %-28s %12s %14s %12s %10s %10s\n' "$r" "$s" "$w" "$i" "$c" "$v" "$m"
done
echo "logs in $out" >&2
