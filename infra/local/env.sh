#!/usr/bin/env bash
# Print shell "export" lines that point the tests at the local services started by infra/local.
#
# Usage: eval "$(infra/local/env.sh)"
#
# The lines are printed whether or not the services are running, and a warning goes to stderr for each
# service that does not accept connections. The ports follow the same GEOSHARD_*_PORT variables as the
# start scripts. GEOSHARD_PYTHON keeps its current value when set, else it is <repo>/.venv/bin/python.
set -euo pipefail

SERVICE_NAME="env"
SCRIPT_DIR="$(dirname "$(realpath "${BASH_SOURCE[0]}")")"
REPO_ROOT="$(realpath "$SCRIPT_DIR/../..")"
# shellcheck source=infra/local/lib.sh
source "$SCRIPT_DIR/lib.sh"

database_url="$("$SCRIPT_DIR/postgres.sh" url)"
kafka_brokers="$("$SCRIPT_DIR/kafka.sh" brokers)"
s3_endpoint="$("$SCRIPT_DIR/s3.sh" endpoint)"
python="${GEOSHARD_PYTHON:-$REPO_ROOT/.venv/bin/python}"

port_open "${GEOSHARD_PG_PORT:-55432}" || log "warning: PostgreSQL is not running. Start it with infra/local/postgres.sh start"
port_open "${GEOSHARD_KAFKA_PORT:-59092}" || log "warning: Kafka is not running. Start it with infra/local/kafka.sh start"
port_open "${GEOSHARD_S3_PORT:-59000}" || log "warning: the S3 server is not running. Start it with infra/local/s3.sh start"
"$python" -c 'import webdataset' 2>/dev/null ||
  log "warning: $python cannot import webdataset. Create it with: python3 -m venv .venv && .venv/bin/pip install webdataset numpy pillow"

print_export() {
  printf 'export %s=%q\n' "$1" "$2"
}

print_export GEOSHARD_TEST_DATABASE_URL "$database_url"
print_export GEOSHARD_TEST_KAFKA_BROKERS "$kafka_brokers"
print_export GEOSHARD_TEST_S3_ENDPOINT "$s3_endpoint"
print_export AWS_ACCESS_KEY_ID test
print_export AWS_SECRET_ACCESS_KEY test
print_export AWS_REGION us-east-1
print_export GEOSHARD_PYTHON "$python"
