# Sourced by the compare_*.sh scripts: the key figures of one bench_worker.py log, "|"-separated.
#   worker_lines LOG  ->  worker|in-process|raw consume|River   (events/s; empty where a line is missing)
worker_lines() {
    local log=$1 label
    local -a out=()
    for label in "fusionrec worker, full stack" "in-process (Redis, no broker)" "broker raw consume" "River BiasedMF"; do
        out+=("$(grep -m1 "$label" "$log" | awk '{print $NF}' || true)")
    done
    (IFS='|'; echo "${out[*]}")
}
