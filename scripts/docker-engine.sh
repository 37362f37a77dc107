#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine, or stop the one we started.
#
#   scripts/docker-engine.sh start   # install docker.io if dockerd is missing, start dockerd
#   scripts/docker-engine.sh stop    # stop dockerd only if `start` started it
#   scripts/docker-engine.sh status  # say whether an engine answers and who started it
#
# Why a script and not a service: the machines this project is tested on have no
# init system that manages dockerd (no systemd), and an engine that somebody else
# runs must never be stopped by our clean-up. So `start` records the pid of the
# dockerd it launched in a state directory, and `stop` only ever signals that pid.
set -euo pipefail

log() { printf 'docker-engine: %s\n' "$*" >&2; }

# Starting, stopping and installing an engine need root: as root the script runs as it
# is; as another user it runs itself again through sudo (as scripts/test.sh does with
# its root-only steps), keeping the variables that configure it. Using the engine
# afterwards as that user needs access to its socket (the `docker` group).
if [[ $EUID -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        log "starting or stopping dockerd needs root: run as root, or install and set up sudo"
        exit 1
    fi
    exec sudo --preserve-env=VLLM_NGINX_STATE_DIR,DOCKER_SOCKET,DOCKER_ENGINE_WAIT_SECONDS,DOCKER_HOST \
        bash "$0" "$@"
fi

STATE_DIR="${VLLM_NGINX_STATE_DIR:-}"
if [[ -z "$STATE_DIR" ]]; then
    if [[ -w /var/run ]]; then STATE_DIR=/var/run/vllm-nginx; else STATE_DIR=/tmp/vllm-nginx; fi
fi
PID_FILE="$STATE_DIR/dockerd.pid"
LOG_FILE="$STATE_DIR/dockerd.log"
SOCKET="${DOCKER_SOCKET:-/var/run/docker.sock}"
WAIT_SECONDS="${DOCKER_ENGINE_WAIT_SECONDS:-60}"


engine_answers() {
    docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

our_pid() {
    # Prints the pid recorded by `start` if that process is still a dockerd.
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]] || return 1
    printf '%s\n' "$pid"
}

install_engine() {
    log "dockerd not found: installing Debian's docker.io (apt-get)"
    env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        docker.io >&2
}

start() {
    if engine_answers; then
        log "an engine already answers (server $(docker version --format '{{.Server.Version}}')); nothing to start"
        return 0
    fi
    if ! command -v dockerd >/dev/null 2>&1; then
        install_engine
        # The package's maintainer scripts may have started the engine themselves.
        if engine_answers; then
            log "the engine started during installation; not recording it as ours"
            return 0
        fi
    fi
    if pid="$(our_pid)"; then
        log "dockerd $pid (started earlier by this script) runs but does not answer yet"
    else
        mkdir -p "$STATE_DIR"
        log "starting dockerd (log: $LOG_FILE)"
        # setsid: the engine must outlive the shell (and the test session) that started
        # it. dockerd writes its own pid to our pid file, so `stop` signals dockerd itself
        # and not a wrapper (sudo, setsid). It keeps only the standard streams: under
        # `flock FILE cmd` the lock's descriptor is inherited, and an engine holding it
        # would keep the lock taken for as long as it runs.
        (
            for fd in /proc/self/fd/*; do
                fd="${fd##*/}"
                if ((fd > 2)); then eval "exec ${fd}>&-"; fi
            done
            exec setsid dockerd --pidfile "$PID_FILE"
        ) >>"$LOG_FILE" 2>&1 </dev/null &
        pid=$!
    fi
    local waited=0
    until [[ -S "$SOCKET" ]] && engine_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "dockerd exited; last lines of $LOG_FILE:"
            tail -n 20 "$LOG_FILE" >&2 || true
            return 1
        fi
        if ((waited >= WAIT_SECONDS)); then
            log "dockerd did not answer within ${WAIT_SECONDS}s; see $LOG_FILE"
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "engine answers after ${waited}s (server $(docker version --format '{{.Server.Version}}'), dockerd pid $(our_pid || echo '?'))"
}

stop() {
    local pid
    if ! pid="$(our_pid)"; then
        log "no dockerd started by this script is running; nothing to stop"
        rm -f "$PID_FILE"
        return 0
    fi
    log "stopping dockerd $pid"
    kill -TERM "$pid"
    local waited=0
    while kill -0 "$pid" 2>/dev/null; do
        if ((waited >= 30)); then
            log "dockerd $pid still running after 30s; leaving it (see $LOG_FILE)"
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    rm -f "$PID_FILE"
    log "dockerd stopped"
}

status() {
    if engine_answers; then
        log "engine answers (server $(docker version --format '{{.Server.Version}}'))"
    else
        log "no engine answers"
    fi
    if pid="$(our_pid)"; then log "dockerd $pid was started by this script"; fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
