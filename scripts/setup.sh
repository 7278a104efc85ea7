#!/usr/bin/env bash
# Installs everything fusionrec needs on a fresh Debian/Ubuntu machine, idempotently:
#   - Debian packages: redis-server (the embedded stack starts one when none is reachable), python3-venv,
#     prometheus (promtool checks the alert rules; the tests start their own Prometheus on loopback; the packaged
#     service is kept from starting and left disabled);
#   - a virtual environment in .venv with fusionrec and its pinned dependencies (torch's CPU wheel).
# Re-running it is cheap: the Python install is skipped while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
log() { printf '[setup] %s\n' "$*"; }

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
"$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
if ((${#need_apt[@]})); then
    if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
        log "missing Debian packages: ${need_apt[*]}; install them as root (apt-get install ${need_apt[*]})"; exit 1
    fi
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    log "installing Debian packages: ${need_apt[*]}"
    $SUDO apt-get update -qq
    # Packages must not start their services here (Debian's prometheus would listen on :9090 for good): a
    # policy-rc.d that refuses every start, for the install only, unless the machine already has one.
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod 755 "$policy"
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null \
        || { [ -z "$policy" ] || $SUDO rm -f "$policy"; exit 1; }
    [ -z "$policy" ] || $SUDO rm -f "$policy"
    if [[ " ${need_apt[*]} " == *" prometheus "* ]]; then  # tests run their own, on free loopback ports
        if [ -d /run/systemd/system ]; then
            $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
        elif command -v update-rc.d >/dev/null; then
            $SUDO update-rc.d prometheus disable >/dev/null 2>&1 || true
        fi
    fi
fi

# Headless Chromium for the serving API's page test; optional: without it that test is skipped (outside CI).
if ! command -v chromium >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null; }; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    log "installing Debian's chromium (the serving API's browser test)"
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        chromium >/dev/null; } || log "could not install chromium: the browser test will be skipped"
fi

"$PYTHON" - <<'PY' || { log "Python >= 3.11 is required (set PYTHON=...)"; exit 1; }
import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

stamp="$VENV/.fusionrec-installed"
want=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "environment up to date ($VENV)"; exit 0
fi
[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
log "installing torch 2.13.0 (CPU build unless a CUDA wheel is configured) and fusionrec[dev] into $VENV"
# torch first and pinned, so nothing later pulls a newer build with gigabytes of CUDA packages.
"${pip[@]}" install 'torch==2.13.0' 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
"${pip[@]}" install -e '.[dev]' 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
echo "$want" > "$stamp"
log "done: $("$VENV/bin/fusionrec" --version)"
