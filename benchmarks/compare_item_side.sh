#!/usr/bin/env bash
# Worker throughput with the item side kept per partition (FUSIONREC_MODEL_ITEM_SYNC_MS=0, the layout before the
# shared item side) and shared (the default), alternating in one run on this checkout:
#
#   bash benchmarks/compare_item_side.sh [ROUNDS]      (default 2; ~2.5 minutes per benchmark run)
set -euo pipefail
exec bash "$(dirname "$0")/compare_setting.sh" FUSIONREC_MODEL_ITEM_SYNC_MS "0 1000" "${1:-2}"
