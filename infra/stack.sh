#!/usr/bin/env bash
# Local skinflow stack on 127.0.0.1: moto S3, MLflow server (artifacts in S3), Prefect server
# + a process worker. Usage: infra/stack.sh up|down|status
#
# Configuration (environment): VENV (default <repo>/.venv), SKINFLOW_STACK_DIR (<repo>/.stack),
# SKINFLOW_S3_PORT (5005), SKINFLOW_MLFLOW_PORT (5050), SKINFLOW_PREFECT_PORT (4200),
# SKINFLOW_S3_BUCKET (skinflow), SKINFLOW_WORK_POOL (skinflow-pool),
# SKINFLOW_STACK_TIMEOUT (seconds per service to become healthy, 180).
# Logs and pids live under the stack dir; `source <stack dir>/env` points clients at the stack.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
RUN="${SKINFLOW_STACK_DIR:-$REPO/.stack}"
HOST=127.0.0.1
S3_PORT="${SKINFLOW_S3_PORT:-5005}"
MLFLOW_PORT="${SKINFLOW_MLFLOW_PORT:-5050}"
PREFECT_PORT="${SKINFLOW_PREFECT_PORT:-4200}"
BUCKET="${SKINFLOW_S3_BUCKET:-skinflow}"
POOL="${SKINFLOW_WORK_POOL:-skinflow-pool}"
TIMEOUT="${SKINFLOW_STACK_TIMEOUT:-180}"
SERVICES=(s3 mlflow prefect worker)  # start order; stopped in reverse

S3_URL="http://$HOST:$S3_PORT"
MLFLOW_URL="http://$HOST:$MLFLOW_PORT"
PREFECT_API="http://$HOST:$PREFECT_PORT/api"
# Dummy credentials: moto accepts any; never real secrets.
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
export MLFLOW_S3_ENDPOINT_URL="$S3_URL"
export PREFECT_HOME="$RUN/prefect" PREFECT_API_URL="$PREFECT_API"
export PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_CLI_PROMPT=false

log() { printf '[stack] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

pid_file() { echo "$RUN/pids/$1.pid"; }

# Pid of a running service, or nothing (stale pid files are removed).
running_pid() {
  local f pid
  f="$(pid_file "$1")"
  [[ -f "$f" ]] || return 0
  pid="$(<"$f")"
  if kill -0 "$pid" 2>/dev/null; then echo "$pid"; else rm -f "$f"; fi
}

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# start NAME CMD...: run CMD in its own session (process group = its pid), logging to logs/NAME.log.
start() {
  local name="$1"; shift
  setsid "$@" >"$RUN/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$(pid_file "$name")"
  log "$name started (pid $!), log $RUN/logs/$name.log"
}

# wait_until NAME CHECK...: poll CHECK until it succeeds, NAME dies, or TIMEOUT passes.
wait_until() {
  local name="$1"; shift
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if [[ -z "$(running_pid "$name")" ]]; then
      tail -n 30 "$RUN/logs/$name.log" >&2 || true
      die "$name exited before becoming healthy"
    fi
    ((SECONDS < deadline)) || die "$name not healthy after ${TIMEOUT}s (see $RUN/logs/$name.log)"
    sleep 1
  done
  log "$name healthy"
}

http_ok() { curl -fs --max-time 3 -o /dev/null "$1"; }

worker_online() {
  curl -fsS --max-time 3 -X POST -H 'Content-Type: application/json' -d '{}' \
    "$PREFECT_API/work_pools/$POOL/workers/filter" | grep -q '"status":"ONLINE"'
}

create_bucket() {
  "$VENV/bin/python" - "$S3_URL" "$BUCKET" <<'PY'
import sys
import boto3

client = boto3.client("s3", endpoint_url=sys.argv[1])
if sys.argv[2] not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
    client.create_bucket(Bucket=sys.argv[2])
PY
}

write_env() {
  cat >"$RUN/env" <<EOF
# source this file to point skinflow at the local stack ($(date -u +%FT%TZ))
export MLFLOW_TRACKING_URI=$MLFLOW_URL
export PREFECT_API_URL=$PREFECT_API
export SKINFLOW_S3_ENDPOINT_URL=$S3_URL
export SKINFLOW_S3_BUCKET=$BUCKET
export MLFLOW_S3_ENDPOINT_URL=$S3_URL
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export AWS_DEFAULT_REGION=$AWS_DEFAULT_REGION
EOF
}

check_free() {
  local name pid port
  for name in "${SERVICES[@]}"; do
    pid="$(running_pid "$name")"
    [[ -z "$pid" ]] || die "stack already running ($name pid $pid); run '$0 down' first"
  done
  for port in "$S3_PORT" "$MLFLOW_PORT" "$PREFECT_PORT"; do
    ! port_busy "$port" || die "port $HOST:$port is already in use by another process"
  done
  for bin in moto_server mlflow prefect python; do
    [[ -x "$VENV/bin/$bin" ]] || die "$VENV/bin/$bin not found (set VENV)"
  done
}

up() {
  check_free
  mkdir -p "$RUN/logs" "$RUN/pids" "$PREFECT_HOME"
  echo '*' >"$RUN/.gitignore"
  trap 'log "start failed; stopping what was started"; down' EXIT

  start s3 "$VENV/bin/moto_server" -H "$HOST" -p "$S3_PORT"
  start prefect "$VENV/bin/prefect" server start --host "$HOST" --port "$PREFECT_PORT"
  wait_until s3 http_ok "$S3_URL/moto-api/"
  create_bucket
  start mlflow "$VENV/bin/mlflow" server --backend-store-uri "sqlite:///$RUN/mlflow.db" \
    --artifacts-destination "s3://$BUCKET/mlartifacts" --host "$HOST" --port "$MLFLOW_PORT" --workers 1
  wait_until prefect http_ok "$PREFECT_API/health"
  "$VENV/bin/prefect" work-pool create "$POOL" --type process --overwrite >>"$RUN/logs/prefect.log" 2>&1
  wait_until mlflow http_ok "$MLFLOW_URL/health"
  # Flow runs inherit the worker's environment: point them at this stack's MLflow and S3.
  (cd "$REPO" && MLFLOW_TRACKING_URI="$MLFLOW_URL" SKINFLOW_S3_ENDPOINT_URL="$S3_URL" \
    SKINFLOW_S3_BUCKET="$BUCKET" SKINFLOW_DATA_ROOT="${SKINFLOW_DATA_ROOT:-$REPO/data}" \
    start worker "$VENV/bin/prefect" worker start --pool "$POOL")
  wait_until worker worker_online

  trap - EXIT
  write_env
  cat <<EOF
skinflow stack is up
  S3 (moto)   $S3_URL   bucket s3://$BUCKET
  MLflow      $MLFLOW_URL
  Prefect UI  http://$HOST:$PREFECT_PORT   (API $PREFECT_API, pool $POOL)
  source $RUN/env
EOF
}

# signal_group PGID SIGNAL SECONDS: send SIGNAL to the group; true once the group is gone.
signal_group() {
  kill "-$2" -- "-$1" 2>/dev/null || return 0
  local deadline=$((SECONDS + $3))
  while ((SECONDS < deadline)); do
    kill -0 -- "-$1" 2>/dev/null || return 0
    sleep 0.25
  done
  ! kill -0 -- "-$1" 2>/dev/null
}

# stop NAME: SIGTERM its process group, a second SIGTERM after 10 s (a Prefect worker
# shuts down only on the second signal), SIGKILL after 5 s more.
stop() {
  local name="$1" pid
  pid="$(running_pid "$name")"
  if [[ -n "$pid" ]]; then
    if signal_group "$pid" TERM 10 || signal_group "$pid" TERM 5; then
      log "$name stopped (pid $pid)"
    else
      signal_group "$pid" KILL 5 || true
      log "$name killed (pid $pid)"
    fi
  fi
  rm -f "$(pid_file "$name")"
}

down() {
  local i
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do stop "${SERVICES[i]}"; done
  rm -f "$RUN/env"
}

status() {
  local name pid up=0
  for name in "${SERVICES[@]}"; do
    pid="$(running_pid "$name")"
    if [[ -n "$pid" ]]; then up=$((up + 1)); printf '%-8s running  pid %s\n' "$name" "$pid"
    else printf '%-8s stopped\n' "$name"; fi
  done
  http_ok "$S3_URL/moto-api/" && echo "s3       healthy  $S3_URL" || echo "s3       unreachable"
  http_ok "$MLFLOW_URL/health" && echo "mlflow   healthy  $MLFLOW_URL" || echo "mlflow   unreachable"
  http_ok "$PREFECT_API/health" && echo "prefect  healthy  $PREFECT_API" || echo "prefect  unreachable"
  ((up == ${#SERVICES[@]})) && return 0
  ((up == 0)) && return 3
  return 1
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
