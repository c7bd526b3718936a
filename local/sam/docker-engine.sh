#!/usr/bin/env bash
# Makes a Docker engine available for `sam local` (idempotent).
#
#   local/sam/docker-engine.sh        exit 0: `docker info` answers
#                                     exit 3: no engine and none can be started here (one line says why)
#
# If an engine already answers, nothing is changed. Otherwise, as root with apt, Debian's docker.io is
# installed and dockerd is started in the background (log: $BACKDROP_DOCKERD_LOG). Nothing is pulled.
#
# When this script starts dockerd itself, it also installs an egress guard: containers on the default
# bridge may talk to this machine (the bridge's host address) but nothing they send is forwarded
# beyond it, so a function that tried to reach a public endpoint fails here instead of leaving the
# machine. The guard's drop counter is how tests show that nothing tried.
# BACKDROP_DOCKER_EGRESS_GUARD=0 leaves the firewall alone.
set -euo pipefail

readonly UNAVAILABLE=3
readonly DOCKERD_LOG=${BACKDROP_DOCKERD_LOG:-/var/log/backdrop-dockerd.log}
readonly DOCKERD_PIDFILE=${BACKDROP_DOCKERD_PIDFILE:-/var/run/backdrop-dockerd.pid}
readonly WAIT_SECONDS=${BACKDROP_DOCKERD_WAIT_SECONDS:-60}
readonly APT_TIMEOUT=${BACKDROP_APT_TIMEOUT_SECONDS:-600}
readonly EGRESS_GUARD=${BACKDROP_DOCKER_EGRESS_GUARD:-1}
readonly BRIDGE=docker0

log() { echo "docker-engine: $*" >&2; }
unavailable() {
    # One line, so a caller can show it as the reason for a skip.
    echo "docker-engine: UNAVAILABLE: $*" >&2
    exit "$UNAVAILABLE"
}

engine_answers() {
    command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1
}

apt_install() {
    # Non-interactive, no recommends (the engine needs none of them); `apt-get update` once if the
    # package lists are missing or stale.
    export DEBIAN_FRONTEND=noninteractive
    if ! timeout "$APT_TIMEOUT" apt-get install -y --no-install-recommends "$@" >&2; then
        log "apt-get install $* failed; refreshing the package lists once"
        timeout "$APT_TIMEOUT" apt-get update >&2 || return 1
        timeout "$APT_TIMEOUT" apt-get install -y --no-install-recommends "$@" >&2 || return 1
    fi
}

install_egress_guard() {
    [[ $EGRESS_GUARD == 1 ]] || { log "egress guard disabled (BACKDROP_DOCKER_EGRESS_GUARD=0)"; return 0; }
    command -v iptables >/dev/null 2>&1 || { log "no iptables: egress guard not installed"; return 0; }
    # DOCKER-USER is the chain Docker reserves for rules like this one; dockerd creates it at start.
    local rule=(DOCKER-USER -i "$BRIDGE" ! -o "$BRIDGE" -j DROP)
    if iptables -C "${rule[@]}" 2>/dev/null; then
        return 0
    fi
    if iptables -I "${rule[@]}"; then
        log "egress guard installed: traffic from $BRIDGE is not forwarded off this machine"
    else
        log "could not install the egress guard (iptables -I DOCKER-USER failed)"
    fi
}

alive() {
    # Process $1 is a live $2 (not a zombie awaiting its reaper, not a reused pid).
    local pid=$1 name=$2
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/comm && $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] &&
        [[ $(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) != Z ]]
}
dockerd_alive() { alive "$1" dockerd; }

our_dockerd() {
    [[ -f $DOCKERD_PIDFILE ]] && dockerd_alive "$(cat "$DOCKERD_PIDFILE")"
}

start_dockerd() {
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    # A killed dockerd leaves its own and its containerd's pid files; while those pids are zombies
    # (this machine's init reaps late) a new dockerd refuses to start or waits for a dead containerd.
    local pidfile name
    for pidfile in /var/run/docker.pid:dockerd /var/run/docker/containerd/containerd.pid:containerd; do
        name=${pidfile##*:}
        pidfile=${pidfile%:*}
        if [[ -f $pidfile ]] && ! alive "$(cat "$pidfile")" "$name"; then
            log "removing the stale $pidfile of a $name that is gone"
            rm -f "$pidfile"
        fi
    done
    log "starting dockerd (log: $DOCKERD_LOG)"
    # setsid: the daemon must outlive this script and the caller's process group (Ctrl-C in a test
    # run must not take the engine down with it).
    setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$DOCKERD_PIDFILE"
    local deadline=$((SECONDS + WAIT_SECONDS))
    until engine_answers; do
        if ! dockerd_alive "$pid"; then
            tail -n 5 "$DOCKERD_LOG" >&2 || true
            unavailable "dockerd exited during start-up (see $DOCKERD_LOG)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 5 "$DOCKERD_LOG" >&2 || true
            unavailable "dockerd did not answer within ${WAIT_SECONDS}s (pid $pid, see $DOCKERD_LOG)"
        fi
        sleep 0.5
    done
    log "dockerd is up (pid $pid)"
    install_egress_guard
}

main() {
    if engine_answers; then
        log "engine answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo unknown))"
        # An engine this script started earlier keeps its guard (re-added if the rule was flushed).
        if [[ $(id -u) -eq 0 ]] && our_dockerd; then
            install_egress_guard
        fi
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        unavailable "no Docker engine answers and this user (uid $(id -u)) cannot install or start one; start Docker, or run as root"
    fi
    if ! command -v dockerd >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 || unavailable "no Docker engine, no dockerd and no apt-get to install docker.io"
        log "installing docker.io from the Debian archive"
        apt_install docker.io || unavailable "apt-get install docker.io failed"
    fi
    if our_dockerd; then
        # Started earlier but not answering yet (or wedged): wait for it rather than start a second one.
        local pid deadline=$((SECONDS + WAIT_SECONDS))
        pid=$(cat "$DOCKERD_PIDFILE")
        log "dockerd (pid $pid) is running; waiting for it to answer"
        while dockerd_alive "$pid"; do
            if engine_answers; then
                install_egress_guard
                return 0
            fi
            ((SECONDS < deadline)) || unavailable "dockerd (pid $pid) runs but does not answer within ${WAIT_SECONDS}s"
            sleep 0.5
        done
        log "dockerd (pid $pid) exited; starting a new one"
    fi
    start_dockerd
}

main "$@"
