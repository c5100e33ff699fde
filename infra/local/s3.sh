#!/usr/bin/env bash
# Run an S3-compatible server (moto's server mode) for the integration tests.
#
# Usage: infra/local/s3.sh start|stop|restart|status|endpoint|clean
#
#   start     install moto into a virtual environment on first use, start the server and wait until
#             it accepts connections. Succeeds when already running.
#   stop      SIGTERM, then SIGKILL after 10s. Succeeds when not running.
#   restart   stop, then start. moto keeps all buckets and objects in memory, so a restart deletes them.
#   status    exit 0 when the server is running, 3 when it is not.
#   endpoint  print the endpoint URL, for example http://127.0.0.1:59000
#   clean     stop the server and delete its log and virtual environments.
#
# Environment:
#   GEOSHARD_INFRA_DIR         state directory (default: $HOME/.cache/geoshard-infra). This script uses <dir>/s3
#   GEOSHARD_S3_PORT           TCP port on 127.0.0.1 (default: 59000)
#   GEOSHARD_MOTO_VERSION      moto version from PyPI (default: 5.2.5)
#   GEOSHARD_S3_START_TIMEOUT  seconds to wait for the server to start (default: 30)
#
# moto gets its own virtual environment in <dir>/s3/venv-<moto version> instead of the project's .venv, so that its
# roughly 60 packages do not leak into the Python environment that geoshard itself runs with.
# moto accepts any access key, and clients conventionally use AWS_ACCESS_KEY_ID=test, AWS_SECRET_ACCESS_KEY=test
# and AWS_REGION=us-east-1 (see infra/local/env.sh). Clients must use path-style addressing
# (http://127.0.0.1:59000/<bucket>/<key>).
set -euo pipefail

SERVICE_NAME=s3
# shellcheck source=infra/local/lib.sh
source "$(dirname "$(realpath "${BASH_SOURCE[0]}")")/lib.sh"

S3_PORT="${GEOSHARD_S3_PORT:-59000}"
MOTO_VERSION="${GEOSHARD_MOTO_VERSION:-5.2.5}"
S3_START_TIMEOUT="${GEOSHARD_S3_START_TIMEOUT:-30}"
check_port GEOSHARD_S3_PORT "$S3_PORT"
[[ "$MOTO_VERSION" =~ ^[0-9][0-9A-Za-z.]*$ ]] || die "invalid GEOSHARD_MOTO_VERSION: '$MOTO_VERSION'"
[[ "$S3_START_TIMEOUT" =~ ^[0-9]+$ ]] || die "invalid GEOSHARD_S3_START_TIMEOUT: '$S3_START_TIMEOUT' (expected seconds)"

S3_HOME="$GEOSHARD_INFRA_DIR/s3"
VENV="$S3_HOME/venv-$MOTO_VERSION"
INSTALLED_MARKER="$VENV/.geoshard-installed"
SERVER_LOG="$S3_HOME/moto.log"
PIDFILE="$S3_HOME/moto.pid"
# Text that identifies our server's command line in /proc/<pid>/cmdline.
PROCESS_MARKER="$VENV/bin/moto_server -H 127.0.0.1 -p $S3_PORT"

# Create the virtual environment and install moto[server] into it, unless this version is already there.
ensure_moto() {
  [[ -f "$INSTALLED_MARKER" ]] && return 0
  command -v python3 >/dev/null || apt_install python3 python3-venv
  local start=$SECONDS
  rm -rf "$VENV"
  # Debian's python3 lacks ensurepip, and so cannot create a venv, until python3-venv is installed.
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    apt_install python3-venv
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
  fi
  log "installing moto[server]==$MOTO_VERSION from PyPI into $VENV"
  if ! "$VENV/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" >"$S3_HOME/pip.log" 2>&1; then
    show_log_tail "$S3_HOME/pip.log"
    rm -rf "$VENV"
    die "pip failed to install moto[server]==$MOTO_VERSION (log: $S3_HOME/pip.log)"
  fi
  touch "$INSTALLED_MARKER"
  log "installed moto $MOTO_VERSION in $((SECONDS - start))s"
}

endpoint() {
  echo "http://127.0.0.1:$S3_PORT"
}

start() {
  mkdir -p "$S3_HOME"
  if pid_alive "$PIDFILE" "$PROCESS_MARKER"; then
    port_open "$S3_PORT" ||
      die "the server is running (pid $(cat "$PIDFILE")) but 127.0.0.1:$S3_PORT does not accept connections. Run: $0 restart"
    log "already running: $(endpoint)"
    return 0
  fi
  port_open "$S3_PORT" && die "127.0.0.1:$S3_PORT is already in use by another process. Set GEOSHARD_S3_PORT to a free port"

  ensure_moto
  [[ -f "$SERVER_LOG" ]] && mv "$SERVER_LOG" "$SERVER_LOG.previous"
  local start=$SECONDS
  log "starting moto $MOTO_VERSION on 127.0.0.1:$S3_PORT (log: $SERVER_LOG)"
  # setsid puts the server in its own session, so a Ctrl-C in the terminal that ran this script does not reach it.
  setsid "$VENV/bin/python" "$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" </dev/null >>"$SERVER_LOG" 2>&1 &
  echo $! >"$PIDFILE"
  if ! wait_for_port "$S3_PORT" "$S3_START_TIMEOUT" "$PIDFILE" "$PROCESS_MARKER" "$SERVER_LOG"; then
    # Stop a server that is still starting, so that a failed start leaves nothing running.
    stop_pidfile "$PIDFILE" "$PROCESS_MARKER" 10
    die "the S3 server failed to start. See the log above"
  fi
  log "ready in $((SECONDS - start))s: $(endpoint)"
}

stop() {
  if ! pid_alive "$PIDFILE" "$PROCESS_MARKER"; then
    rm -f "$PIDFILE"
    log "not running"
    return 0
  fi
  stop_pidfile "$PIDFILE" "$PROCESS_MARKER" 10
  log "stopped"
}

status() {
  if pid_alive "$PIDFILE" "$PROCESS_MARKER"; then
    log "running (pid $(cat "$PIDFILE")): $(endpoint)"
    return 0
  fi
  log "not running"
  return 3
}

clean() {
  stop
  log "deleting $S3_HOME/venv-* and the server log"
  rm -rf "$S3_HOME"/venv-* "$SERVER_LOG" "$SERVER_LOG.previous" "$S3_HOME/pip.log"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop && start ;;
  status) status ;;
  endpoint) endpoint ;;
  clean) clean ;;
  *)
    echo "usage: $0 start|stop|restart|status|endpoint|clean" >&2
    exit 2
    ;;
esac
