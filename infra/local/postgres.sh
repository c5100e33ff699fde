#!/usr/bin/env bash
# Run a throwaway PostgreSQL server for the integration tests.
#
# Usage: infra/local/postgres.sh start|stop|restart|status|url|clean
#
#   start    install PostgreSQL with apt-get if no initdb is found, create the cluster on first use,
#            start the server and create the database "geoshard". Succeeds when already running.
#   stop     fast shutdown (rolls back open transactions). Succeeds when not running.
#   restart  stop, then start. Data is kept.
#   status   exit 0 when the server is running, 3 when it is not.
#   url      print the connection URL, for example postgres://postgres@127.0.0.1:55432/geoshard
#   clean    stop the server and delete its data directory.
#
# Environment:
#   GEOSHARD_INFRA_DIR   state directory (default: $HOME/.cache/geoshard-infra). This script uses <dir>/postgres
#   GEOSHARD_PG_PORT     TCP port on 127.0.0.1 (default: 55432)
#   GEOSHARD_PG_VERSION  PostgreSQL major version to prefer (default: 15). When it is not installed, the newest installed version is used
#
# The server listens only on 127.0.0.1 and has no Unix socket. Authentication is "trust", so any local
# user can connect as the superuser "postgres" without a password.
# fsync, synchronous_commit and full_page_writes are off for speed. A clean stop or restart keeps all data,
# but an operating system crash can corrupt the cluster. Use "clean" to start over.
#
# PostgreSQL refuses to run as root, so when this script runs as root it runs the server as the "postgres"
# OS user. That user cannot enter a private home directory such as /root (mode 0700), so in that case the
# data directory and server log live in /var/tmp/geoshard-postgres-<checksum of GEOSHARD_INFRA_DIR>, and
# <infra dir>/postgres/data and <infra dir>/postgres/postgres.log are symbolic links to them.
set -euo pipefail

SERVICE_NAME=postgres
# shellcheck source=infra/local/lib.sh
source "$(dirname "$(realpath "${BASH_SOURCE[0]}")")/lib.sh"

PG_PORT="${GEOSHARD_PG_PORT:-55432}"
PG_VERSION_PREFERRED="${GEOSHARD_PG_VERSION:-15}"
PG_DATABASE=geoshard
PG_USER=postgres
PG_HOME="$GEOSHARD_INFRA_DIR/postgres"
check_port GEOSHARD_PG_PORT "$PG_PORT"

# Print the bin directory of the preferred installed PostgreSQL version, or of the newest one.
find_pg_bin() {
  if [[ -x "/usr/lib/postgresql/$PG_VERSION_PREFERRED/bin/initdb" ]]; then
    echo "/usr/lib/postgresql/$PG_VERSION_PREFERRED/bin"
    return 0
  fi
  local candidates=() path
  for path in /usr/lib/postgresql/*/bin/initdb; do
    [[ -x "$path" ]] && candidates+=("$path")
  done
  ((${#candidates[@]} > 0)) || return 1
  dirname "$(printf '%s\n' "${candidates[@]}" | sort -V | tail -n 1)"
}

# Install the Debian "postgresql" package without the default cluster that its postinst script would
# create and start on port 5432. pg_createcluster reads create_main_cluster from createcluster.d.
install_postgres() {
  if ((EUID == 0)); then
    mkdir -p /etc/postgresql-common/createcluster.d
    echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/geoshard-no-main-cluster.conf
  fi
  apt_install postgresql
}

# Run a command as the server's OS user: "postgres" when this script runs as root, else the current user.
as_pg() {
  if ((EUID == 0)); then
    (cd "$PG_BASE" && runuser -u "$PG_USER" -- "$@")
  else
    (cd "$PG_BASE" && "$@")
  fi
}

# Choose PG_BASE, the directory that contains the data directory and the server log, and create it.
prepare_dirs() {
  mkdir -p "$PG_HOME"
  PG_BASE="$PG_HOME"
  if ((EUID == 0)); then
    id -u "$PG_USER" >/dev/null 2>&1 || die "OS user '$PG_USER' not found. The Debian postgresql package creates it"
    command -v runuser >/dev/null || die "runuser not found. Install the util-linux package"
    if ! runuser -u "$PG_USER" -- test -x "$PG_HOME"; then
      local checksum
      checksum="$(printf '%s' "$GEOSHARD_INFRA_DIR" | cksum | cut -d ' ' -f 1)"
      PG_BASE="/var/tmp/geoshard-postgres-$checksum"
    fi
    mkdir -p "$PG_BASE"
    # /var/tmp is writable by everyone, so refuse a directory that another user created first.
    local owner
    owner="$(stat -c %U "$PG_BASE")"
    [[ "$owner" == root || "$owner" == "$PG_USER" ]] || die "$PG_BASE is owned by '$owner', expected root or $PG_USER. Remove it or set GEOSHARD_INFRA_DIR"
    chown "$PG_USER:" "$PG_BASE"
    chmod 0700 "$PG_BASE"
    if [[ "$PG_BASE" != "$PG_HOME" ]]; then
      ln -sfn "$PG_BASE/data" "$PG_HOME/data"
      ln -sfn "$PG_BASE/postgres.log" "$PG_HOME/postgres.log"
    fi
  fi
  PG_DATA="$PG_BASE/data"
  PG_LOG="$PG_BASE/postgres.log"
}

# Locate the server binaries. With "install", install PostgreSQL when none are found.
# Without it, return 1 so that stop and status can report "not running" without installing anything.
prepare_binaries() {
  if ! PG_BIN="$(find_pg_bin)"; then
    [[ "${1:-}" == install ]] || return 1
    log "no initdb found under /usr/lib/postgresql/*/bin"
    install_postgres
    PG_BIN="$(find_pg_bin)" || die "initdb is still missing after installing the postgresql package"
  fi
  # Debian installs each major version under /usr/lib/postgresql/<major>/bin.
  PG_MAJOR="$(basename "$(dirname "$PG_BIN")")"
}

is_running() {
  [[ -f "$PG_DATA/PG_VERSION" ]] && as_pg "$PG_BIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1
}

init_cluster() {
  log "creating a PostgreSQL $PG_MAJOR cluster in $PG_DATA"
  as_pg "$PG_BIN/initdb" --pgdata="$PG_DATA" --username="$PG_USER" --auth=trust \
    --encoding=UTF8 --no-locale --no-instructions >"$PG_BASE/initdb.log" 2>&1 ||
    {
      show_log_tail "$PG_BASE/initdb.log"
      die "initdb failed for $PG_DATA"
    }
  echo "include_if_exists = 'geoshard.conf'" | as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null
}

# Rewrite the settings that this script owns. The file is read at every server start.
write_config() {
  as_pg tee "$PG_DATA/geoshard.conf" >/dev/null <<EOF
# Written by infra/local/postgres.sh at every start. Edits are overwritten.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
}

psql_admin() {
  PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -q -w -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres "$@"
}

ensure_database() {
  local exists
  exists="$(psql_admin -tAc "select 1 from pg_database where datname = '$PG_DATABASE'")"
  if [[ "$exists" != 1 ]]; then
    log "creating database $PG_DATABASE"
    psql_admin -c "create database $PG_DATABASE"
  fi
}

url() {
  echo "postgres://$PG_USER@127.0.0.1:$PG_PORT/$PG_DATABASE"
}

start() {
  prepare_binaries install
  prepare_dirs

  if is_running; then
    port_open "$PG_PORT" ||
      die "a server is running on $PG_DATA but 127.0.0.1:$PG_PORT does not accept connections. Run: $0 restart"
    ensure_database
    log "already running: $(url)"
    return 0
  fi

  if [[ -f "$PG_DATA/PG_VERSION" ]]; then
    local data_major
    data_major="$(cat "$PG_DATA/PG_VERSION")"
    [[ "$data_major" == "$PG_MAJOR" ]] ||
      die "$PG_DATA was created by PostgreSQL $data_major but the binaries are version $PG_MAJOR. Run: $0 clean"
  else
    init_cluster
  fi

  port_open "$PG_PORT" && die "127.0.0.1:$PG_PORT is already in use by another process. Set GEOSHARD_PG_PORT to a free port"

  write_config
  log "starting PostgreSQL $PG_MAJOR on 127.0.0.1:$PG_PORT (data: $PG_DATA, log: $PG_LOG)"
  if ! as_pg "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t 60 >/dev/null; then
    show_log_tail "$PG_LOG"
    die "PostgreSQL failed to start (log: $PG_LOG)"
  fi
  ensure_database
  log "ready: $(url)"
}

stop() {
  if ! prepare_binaries; then
    log "not running (PostgreSQL is not installed)"
    return 0
  fi
  prepare_dirs
  if ! is_running; then
    log "not running"
    return 0
  fi
  log "stopping PostgreSQL (data: $PG_DATA)"
  as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 60 >/dev/null || {
    show_log_tail "$PG_LOG"
    die "PostgreSQL did not stop within 60s (log: $PG_LOG)"
  }
  log "stopped"
}

status() {
  if ! prepare_binaries; then
    log "not running (PostgreSQL is not installed)"
    return 3
  fi
  prepare_dirs
  if is_running; then
    log "running: $(url)"
    return 0
  fi
  log "not running"
  return 3
}

clean() {
  stop
  prepare_dirs
  log "deleting $PG_DATA"
  rm -rf "$PG_DATA" "$PG_LOG" "$PG_BASE/initdb.log"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop && start ;;
  status) status ;;
  url) url ;;
  clean) clean ;;
  *)
    echo "usage: $0 start|stop|restart|status|url|clean" >&2
    exit 2
    ;;
esac
