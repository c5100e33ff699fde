# shellcheck shell=bash
# Shared helpers for the local test services in infra/local.
# Source this file from a bash script after setting SERVICE_NAME (used as the log prefix).

GEOSHARD_INFRA_DIR="$(realpath -m "${GEOSHARD_INFRA_DIR:-$HOME/.cache/geoshard-infra}")"

log() {
  printf '[%s] %s\n' "${SERVICE_NAME:-infra}" "$*" >&2
}

die() {
  log "error: $*"
  exit 1
}

# Print the last lines of a log file to stderr, between marker lines that are easy to find in CI output.
# Lines are cut at 1000 characters, because some tools (pip, for one) log a single huge line.
show_log_tail() {
  local file="$1" lines="${2:-40}"
  if [[ -f "$file" ]]; then
    printf -- '----- last %s lines of %s -----\n' "$lines" "$file" >&2
    tail -n "$lines" "$file" | cut -c 1-1000 >&2
    printf -- '----- end of %s -----\n' "$file" >&2
  else
    log "log file $file does not exist"
  fi
}

# Succeed when something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Validate that a port value is a number in the TCP range before it reaches a config file.
check_port() {
  local name="$1" value="$2"
  if ! [[ "$value" =~ ^[1-9][0-9]{0,4}$ ]] || ((value > 65535)); then
    die "invalid $name: '$value' (expected a TCP port number from 1 to 65535)"
  fi
}

# Succeed when the process in PIDFILE is alive and its command line contains MARKER.
# Checking the command line keeps a recycled pid of an unrelated process from counting as ours.
pid_alive() {
  local pidfile="$1" marker="$2" pid
  [[ -f "$pidfile" ]] || return 1
  pid="$(cat "$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$marker"
}

# Send SIGTERM to the process in PIDFILE (if it is ours), wait up to TIMEOUT seconds, then SIGKILL.
stop_pidfile() {
  local pidfile="$1" marker="$2" timeout_s="$3" pid waited=0
  if ! pid_alive "$pidfile" "$marker"; then
    rm -f "$pidfile"
    return 0
  fi
  pid="$(cat "$pidfile")"
  log "stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if ((waited >= timeout_s * 10)); then
      log "pid $pid did not exit within ${timeout_s}s after SIGTERM, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$pidfile"
}

# Wait until 127.0.0.1:PORT accepts connections. Returns 1, after printing LOGFILE's tail and an error,
# when the process in PIDFILE exits first or TIMEOUT seconds pass.
wait_for_port() {
  local port="$1" timeout_s="$2" pidfile="$3" marker="$4" logfile="$5" start=$SECONDS
  until port_open "$port"; do
    if ! pid_alive "$pidfile" "$marker"; then
      show_log_tail "$logfile"
      log "error: the process exited before 127.0.0.1:$port accepted connections (log: $logfile)"
      return 1
    fi
    if ((SECONDS - start >= timeout_s)); then
      show_log_tail "$logfile"
      log "error: timed out after ${timeout_s}s waiting for 127.0.0.1:$port (log: $logfile)"
      return 1
    fi
    sleep 0.2
  done
}

# Install Debian packages with apt-get. Only root can do this, so other users get the command to run.
apt_install() {
  if ((EUID != 0)); then
    die "missing Debian packages: $*. Install them with: sudo apt-get install -y $*"
  fi
  command -v apt-get >/dev/null || die "missing packages ($*), and apt-get is not available on this machine to install them"
  log "installing Debian packages: $*"
  local start=$SECONDS
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  log "installed $* in $((SECONDS - start))s"
}
