#!/usr/bin/env bash
# Provides the headless browser the review page's test drives: Debian's chromium package, at
# /usr/bin/chromium (Playwright launches it through executable_path; it never downloads a browser).
#
#   local/browser/install-chromium.sh    exit 0: /usr/bin/chromium runs headless
#                                        exit 3: it is missing and cannot be installed here (not root,
#                                                or no apt-get); the reason is on stderr
#
# Installed with apt-get as root when missing, as local/sam/build-lambda-image.sh installs Docker.
set -euo pipefail

readonly UNAVAILABLE=3
readonly CHROMIUM=${BACKDROP_CHROMIUM:-/usr/bin/chromium}

log() { echo "chromium: $*" >&2; }
unavailable() {
    log "UNAVAILABLE: $*"
    exit "$UNAVAILABLE"
}

runs() {
    # Headless, as the test runs it (root needs --no-sandbox); a broken install fails here.
    timeout 60 "$CHROMIUM" --headless --no-sandbox --disable-gpu --dump-dom about:blank >/dev/null 2>&1
}

if [[ -x $CHROMIUM ]] && runs; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    unavailable "$CHROMIUM is missing and only root may install it: sudo apt-get install chromium"
fi
command -v apt-get >/dev/null || unavailable "$CHROMIUM is missing and there is no apt-get to install it with"
log "installing Debian's chromium package (apt-get)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends chromium fonts-liberation >&2
runs || { log "ERROR: $CHROMIUM was installed but does not run headless"; exit 1; }
log "$("$CHROMIUM" --version 2>/dev/null)"
