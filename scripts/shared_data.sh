#!/usr/bin/env bash
# Prints the folder of the shared real data (../shared/data beside the checkout): $FUSIONREC_SHARED_DATA when set;
# else ../shared/data beside this checkout; else beside the repository this one was cloned from (a clone made in
# a temporary folder); else the first guess, so that the error names where it looked.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if [[ -n "${FUSIONREC_SHARED_DATA:-}" ]]; then echo "$FUSIONREC_SHARED_DATA"; exit 0; fi
if [[ -d "$repo/../shared/data" ]]; then (cd "$repo/../shared/data" && pwd); exit 0; fi
origin=$(git -C "$repo" config --get remote.origin.url 2>/dev/null || true)
if [[ -n "$origin" && -d "$origin/../shared/data" ]]; then (cd "$origin/../shared/data" && pwd); exit 0; fi
echo "$repo/../shared/data"
