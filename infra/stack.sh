#!/usr/bin/env bash
# Local skinflow stack on 127.0.0.1. Usage:
#   infra/stack.sh up [--db sqlite|postgres]   start the stack (default profile: sqlite)
#   infra/stack.sh status | down [--purge] | describe [--db ...] | restart SERVICE
#
# Profiles (SKINFLOW_STACK_DB or --db):
#   sqlite    moto S3, MLflow server (sqlite metadata, S3 artifacts), Prefect server (sqlite), one worker
#   postgres  the team topology on one machine: a PostgreSQL server in its own data directory
#             (MLflow and Prefect metadata), moto S3, MLflow, Prefect, a Ray head plus a second
#             Ray node (`ray start --address`), and two Prefect workers on the pool
#
# Configuration (environment): VENV (default <repo>/.venv), SKINFLOW_STACK_DIR (<repo>/.stack),
# SKINFLOW_S3_PORT (5005), SKINFLOW_MLFLOW_PORT (5050), SKINFLOW_PREFECT_PORT (4200),
# SKINFLOW_S3_BUCKET (skinflow), SKINFLOW_WORK_POOL (skinflow-pool),
# SKINFLOW_STACK_TIMEOUT (seconds per service to become healthy, 180); postgres profile also:
# SKINFLOW_PG_PORT (5432), SKINFLOW_PG_USER (skinflow), SKINFLOW_PG_PASSWORD (generated once into
# <stack dir>/secrets/ when unset), SKINFLOW_PG_BIN (the newest /usr/lib/postgresql/*/bin),
# SKINFLOW_PG_DIR (<stack dir>/postgres; a directory under /tmp when run as root, since the server
# runs as the `postgres` user), SKINFLOW_RAY_PORT (6379), SKINFLOW_RAY_DASHBOARD_PORT (8265: the head's
# dashboard and Jobs API, on 127.0.0.1), SKINFLOW_RAY_CPUS (CPUs per Ray node, 1),
# SKINFLOW_RAY_AUTH_TOKEN (generated once when unset), SKINFLOW_PREFECT_PASSWORD (the Prefect server's
# basic-auth password for user skinflow, generated once when unset: the server refuses a client without
# it, PREFECT_API_AUTH_STRING in the env file). Both profiles: SKINFLOW_WORKERS (workers on the
# pool; sqlite 1, postgres 2), SKINFLOW_WORKER_LIMIT (flow runs at once per worker; unset = no limit).
# Secrets are never printed. Logs and pids live under the stack dir; `source <stack dir>/env`
# (mode 0600: it holds the Ray token) points clients at the stack.
set -euo pipefail
shopt -s extglob

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
PG_PORT="${SKINFLOW_PG_PORT:-5432}"
PG_USER="${SKINFLOW_PG_USER:-skinflow}"
RAY_PORT="${SKINFLOW_RAY_PORT:-6379}"
RAY_DASHBOARD_PORT="${SKINFLOW_RAY_DASHBOARD_PORT:-8265}"  # the head's dashboard: the Jobs API of `ray job submit`
RAY_CPUS="${SKINFLOW_RAY_CPUS:-1}"
ARTIFACTS="s3://$BUCKET/mlartifacts"

S3_URL="http://$HOST:$S3_PORT"
MLFLOW_URL="http://$HOST:$MLFLOW_PORT"
PREFECT_API="http://$HOST:$PREFECT_PORT/api"
# Database URLs carry no password: libpq (psycopg2, for MLflow) and asyncpg (Prefect) read it
# from PGPASSWORD, which only the server processes get.
PG_MLFLOW_URL="postgresql+psycopg2://$PG_USER@$HOST:$PG_PORT/mlflow"
PG_PREFECT_URL="postgresql+asyncpg://$PG_USER@$HOST:$PG_PORT/prefect"
# Dummy credentials: moto accepts any; never real secrets.
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
export MLFLOW_S3_ENDPOINT_URL="$S3_URL"
export PREFECT_HOME="$RUN/prefect" PREFECT_API_URL="$PREFECT_API"
export PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_CLI_PROMPT=false

log() { printf '[stack] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Seconds between a flow run's heartbeats on this stack's workers (Prefect's minimum, 30; its default 180).
HEARTBEAT="${PREFECT_FLOWS_HEARTBEAT_FREQUENCY:-30}"

# The profile: --db on `up`/`describe`, else what the last `up` recorded, else SKINFLOW_STACK_DB.
PROFILE="${SKINFLOW_STACK_DB:-}"
[[ -n "$PROFILE" || ! -f "$RUN/profile" ]] || PROFILE="$(<"$RUN/profile")"
PROFILE="${PROFILE:-sqlite}"

set_profile() {
  case "$PROFILE" in
    sqlite) SERVICES=(s3 mlflow prefect); WORKERS="${SKINFLOW_WORKERS:-1}" ;;
    postgres) SERVICES=(postgres s3 mlflow prefect ray-head ray-node); WORKERS="${SKINFLOW_WORKERS:-2}" ;;
    *) echo "unknown --db '$PROFILE' (sqlite or postgres)" >&2; exit 2 ;;
  esac
  [[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "SKINFLOW_WORKERS must be a positive integer"
  local i
  for ((i = 1; i <= WORKERS; i++)); do SERVICES+=("$(worker_service "$i")"); done
}

# Worker i's service name: worker, worker2, worker3, ...
worker_service() { if (($1 == 1)); then echo worker; else echo "worker$1"; fi; }

pid_file() { echo "$RUN/pids/$1.pid"; }

# Pid of a running service, or nothing (stale pid files are removed).
running_pid() {
  local f pid
  f="$(pid_file "$1")"
  [[ -f "$f" ]] || return 0
  pid="$(<"$f")"
  # a zombie (killed, not yet reaped) answers kill -0 but is dead
  if kill -0 "$pid" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]]; then echo "$pid"
  else rm -f "$f"; fi
}

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# start NAME CMD...: run CMD in its own session (process group = its pid), appending to logs/NAME.log
# (a restarted service keeps what its earlier run logged).
start() {
  local name="$1"; shift
  setsid "$@" >>"$RUN/logs/$name.log" 2>&1 </dev/null &
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

# workers_online N: at least N workers of the pool report ONLINE.
workers_online() {
  local n auth=()
  [[ -z "${PREFECT_API_AUTH_STRING:-}" ]] || auth=(-u "$PREFECT_API_AUTH_STRING")
  n="$(curl -fsS --max-time 3 "${auth[@]}" -X POST -H 'Content-Type: application/json' -d '{}' \
    "$PREFECT_API/work_pools/$POOL/workers/filter" | grep -o '"status":"ONLINE"' | wc -l)"
  ((n >= $1))
}

# worker_starts I: how often worker I has logged that it started; worker_started I N: more than N.
worker_starts() {
  local n
  n="$(grep -c "Worker '$POOL-worker-$1' started!" "$RUN/logs/$(worker_service "$1").log" 2>/dev/null || true)"
  echo "${n:-0}"
}
worker_started() { (($(worker_starts "$1") > $2)); }

create_bucket() {
  "$VENV/bin/python" - "$S3_URL" "$BUCKET" <<'PY'
import sys
import boto3

client = boto3.client("s3", endpoint_url=sys.argv[1])
if sys.argv[2] not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
    client.create_bucket(Bucket=sys.argv[2])
PY
}

# secret NAME ENVVAR: the value of ENVVAR, else one generated once into secrets/NAME (0600).
secret() {
  local f="$RUN/secrets/$1"
  if [[ -n "${!2:-}" ]]; then printf '%s' "${!2}"; return 0; fi
  if [[ ! -s "$f" ]]; then
    (umask 077; mkdir -p "$RUN/secrets"; "$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(24))' >"$f")
  fi
  tr -d '\n' <"$f"
}

# prefect_auth: the team profile's Prefect basic auth (PREFECT_SERVER_API_AUTH_STRING on the server,
# PREFECT_API_AUTH_STRING on every client this script starts: work-pool, automations, workers).
prefect_auth() {
  export PREFECT_API_AUTH_STRING="skinflow:$(secret prefect_password SKINFLOW_PREFECT_PASSWORD)"
}

# ---------------------------------------------------------------- PostgreSQL (postgres profile)
pg_bin() {
  local d="${SKINFLOW_PG_BIN:-}"
  if [[ -z "$d" ]]; then
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  fi
  [[ -n "$d" && -x "$d/initdb" ]] || die "PostgreSQL server binaries not found (run infra/ensure_postgres.sh or set SKINFLOW_PG_BIN)"
  echo "$d"
}

# The server refuses to run as root: as root it runs as the `postgres` user, in a directory that
# user can reach (chosen once and recorded in <stack dir>/postgres.dir).
as_pg() { if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi; }

pg_dir() {
  if [[ -n "${SKINFLOW_PG_DIR:-}" ]]; then echo "$SKINFLOW_PG_DIR"; return 0; fi
  if [[ -f "$RUN/postgres.dir" ]]; then cat "$RUN/postgres.dir"; return 0; fi
  local d="$RUN/postgres"
  if ((EUID == 0)); then
    id postgres >/dev/null 2>&1 || die "running as root needs the 'postgres' user (Debian's postgresql package creates it)"
    d="$(mktemp -d "${TMPDIR:-/tmp}/skinflow-pg.XXXXXX")"
    chown postgres: "$d"
  fi
  mkdir -p "$d"
  echo "$d" >"$RUN/postgres.dir"
  echo "$d"
}

pg_psql() {
  PGPASSWORD="$PG_PASSWORD" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PG_PORT" -U "$PG_USER" "$@"
}

start_postgres() {
  PG_BIN="$(pg_bin)"
  local d data
  d="$(pg_dir)"; data="$d/data"
  if [[ ! -f "$data/PG_VERSION" ]]; then
    # the password reaches initdb through a 0600 file owned by the server's user, then goes
    (umask 077; printf '%s\n' "$PG_PASSWORD" >"$d/pwfile")
    ((EUID != 0)) || chown postgres: "$d/pwfile"
    as_pg "$PG_BIN/initdb" -D "$data" -U "$PG_USER" --pwfile="$d/pwfile" --auth=scram-sha-256 -E UTF8 \
      --no-instructions >"$RUN/logs/postgres-initdb.log" 2>&1 || { rm -f "$d/pwfile"; die "initdb failed (see $RUN/logs/postgres-initdb.log)"; }
    rm -f "$d/pwfile"
  fi
  touch "$RUN/logs/postgres.log"
  ((EUID != 0)) || chown postgres: "$RUN/logs/postgres.log" 2>/dev/null || true
  # TCP on 127.0.0.1 only, no Unix socket (no /var/run/postgresql)
  as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$d/server.log" -w -t "$TIMEOUT" \
    -o "-c listen_addresses=$HOST -p $PG_PORT -c unix_socket_directories='' -c max_connections=200" \
    start >>"$RUN/logs/postgres.log" 2>&1 || { tail -n 30 "$d/server.log" >&2 || true; die "postgres did not start"; }
  head -n 1 "$data/postmaster.pid" >"$(pid_file postgres)"
  log "postgres started (pid $(<"$(pid_file postgres)")), data $data, log $d/server.log"
  local db
  for db in mlflow prefect; do
    [[ "$(pg_psql -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$db'")" == 1 ]] ||
      pg_psql -d postgres -c "CREATE DATABASE $db"
  done
  log "postgres healthy (databases mlflow, prefect)"
}

stop_postgres() {
  local pid d
  pid="$(running_pid postgres)"
  if [[ -n "$pid" ]]; then
    d="$(pg_dir)"
    if as_pg "$(pg_bin)/pg_ctl" -D "$d/data" -m fast -w -t 30 stop >>"$RUN/logs/postgres.log" 2>&1; then
      log "postgres stopped (pid $pid)"
    else
      kill -KILL "$pid" 2>/dev/null || true
      log "postgres killed (pid $pid)"
    fi
  fi
  rm -f "$(pid_file postgres)"
}

# ---------------------------------------------------------------- Ray (postgres profile)
# Ray (on Linux) turns --node-ip-address=127.0.0.1 into the machine's network address, and a node
# with that address listens on every interface. Its single-machine switch
# (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) keeps 127.0.0.1 but refuses a second node, so the second
# node's `ray start` takes the loopback address as given (Ray's resolver bypassed for that command);
# across machines it is plain `ray start --address=<head>:6379` (infra/README.md).
SECOND_NODE='import sys; import ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; from ray.scripts.scripts import main; sys.argv[0] = "ray"; main()'

ray_env() {
  RAY_TOKEN="$(secret ray_token SKINFLOW_RAY_AUTH_TOKEN)"
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$RAY_TOKEN" RAY_USAGE_STATS_ENABLED=0
}

# Ray's socket paths under its temp dir must stay below ~107 characters: a short dir under /tmp.
ray_temp() {
  local f="$RUN/$1.tmpdir"
  if [[ ! -f "$f" ]]; then mktemp -d "${TMPDIR:-/tmp}/sfray.XXXXXX" >"$f"; fi
  cat "$f"
}

ray_common() {
  echo --node-ip-address=$HOST --num-cpus="$RAY_CPUS" --disable-usage-stats --object-store-memory=100000000 --block
}

start_ray_head() {
  ray_env
  # shellcheck disable=SC2046
  (cd "$REPO" && PYTHONPATH="$REPO" OMP_NUM_THREADS=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 \
    start ray-head "$VENV/bin/ray" start --head --port="$RAY_PORT" --include-dashboard=true \
    --dashboard-host="$HOST" --dashboard-port="$RAY_DASHBOARD_PORT" \
    --temp-dir="$(ray_temp ray-head)" $(ray_common))
}

start_ray_node() {
  ray_env
  # shellcheck disable=SC2046
  (cd "$REPO" && PYTHONPATH="$REPO" OMP_NUM_THREADS=1 \
    start ray-node "$VENV/bin/python" -c "$SECOND_NODE" start --address="$HOST:$RAY_PORT" \
    --resources='{"worker_node": 1}' --temp-dir="$(ray_temp ray-node)" $(ray_common))
}

# ray_nodes N: the cluster has N alive nodes (a driver connects and counts).
ray_nodes() {
  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 timeout 60 "$VENV/bin/python" - "$HOST:$RAY_PORT" "$1" <<'PY'
import sys
import time

import ray

ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
deadline = time.time() + 50
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[2]):
    if time.time() > deadline:
        sys.exit(1)
    time.sleep(1)
ray.shutdown()
PY
}

# ---------------------------------------------------------------- MLflow, Prefect, workers
start_s3() { start s3 "$VENV/bin/moto_server" -H "$HOST" -p "$S3_PORT"; }

start_prefect() {
  if [[ "$PROFILE" == postgres ]]; then
    PGPASSWORD="$PG_PASSWORD" PREFECT_API_DATABASE_CONNECTION_URL="$PG_PREFECT_URL" \
      PREFECT_SERVER_API_AUTH_STRING="$PREFECT_API_AUTH_STRING" \
      start prefect "$VENV/bin/prefect" server start --host "$HOST" --port "$PREFECT_PORT"
  else
    start prefect "$VENV/bin/prefect" server start --host "$HOST" --port "$PREFECT_PORT"
  fi
}

start_mlflow() {
  local store="sqlite:///$RUN/mlflow.db"
  [[ "$PROFILE" != postgres ]] || store="$PG_MLFLOW_URL"
  # MLflow's job runners (huey consumers, 8 processes of ~250 MB) serve its GenAI features, which
  # skinflow does not use: without them the server starts with a quarter of the CPU
  PGPASSWORD="${PG_PASSWORD:-}" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    start mlflow "$VENV/bin/mlflow" server --backend-store-uri "$store" \
    --artifacts-destination "$ARTIFACTS" --host "$HOST" --port "$MLFLOW_PORT" --workers 1
}

# start_worker I: worker I on the pool, named <pool>-worker-I.
start_worker() {
  local limit=()
  [[ -z "${SKINFLOW_WORKER_LIMIT:-}" ]] || limit=(--limit "$SKINFLOW_WORKER_LIMIT")
  # Flow runs inherit the worker's environment: point them at this stack's MLflow, S3 and Ray.
  (
    cd "$REPO"
    export MLFLOW_TRACKING_URI="$MLFLOW_URL" SKINFLOW_S3_ENDPOINT_URL="$S3_URL" SKINFLOW_S3_BUCKET="$BUCKET"
    export SKINFLOW_DATA_ROOT="${SKINFLOW_DATA_ROOT:-$REPO/data}"
    # flow runs send heartbeats (30 s, Prefect's minimum) so that a run whose worker dies with it is
    # marked Crashed by the crash-zombie-flow-runs automation instead of staying Running
    export PREFECT_FLOWS_HEARTBEAT_FREQUENCY="$HEARTBEAT"
    if [[ "$PROFILE" == postgres ]]; then
      ray_env
      export RAY_ADDRESS="$HOST:$RAY_PORT" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
    fi
    start "$(worker_service "$1")" "$VENV/bin/prefect" worker start --pool "$POOL" --name "$POOL-worker-$1" "${limit[@]}"
  )
}

# The server-side automations in infra/automations/ (one YAML each), replaced by name so that
# up after up leaves one of each.
create_automations() {
  "$VENV/bin/python" "$REPO/infra/apply_automations.py" "$REPO/infra/automations" >>"$RUN/logs/prefect.log" 2>&1 \
    || die "could not create the Prefect automations of infra/automations/ (see $RUN/logs/prefect.log)"
}

write_env() {
  (umask 077; cat >"$RUN/env" <<EOF
# source this file to point skinflow at the local stack ($(date -u +%FT%TZ), profile $PROFILE)
export MLFLOW_TRACKING_URI=$MLFLOW_URL
export PREFECT_API_URL=$PREFECT_API
export SKINFLOW_S3_ENDPOINT_URL=$S3_URL
export SKINFLOW_S3_BUCKET=$BUCKET
export MLFLOW_S3_ENDPOINT_URL=$S3_URL
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export AWS_DEFAULT_REGION=$AWS_DEFAULT_REGION
EOF
  if [[ "$PROFILE" == postgres ]]; then
    cat >>"$RUN/env" <<EOF
export PREFECT_API_AUTH_STRING=$PREFECT_API_AUTH_STRING
export RAY_ADDRESS=$HOST:$RAY_PORT
export RAY_API_SERVER_ADDRESS=http://$HOST:$RAY_DASHBOARD_PORT
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN=$RAY_TOKEN
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
EOF
  fi)
}

profile_ports() {
  PORTS=("$S3_PORT" "$MLFLOW_PORT" "$PREFECT_PORT")
  [[ "$PROFILE" != postgres ]] || PORTS+=("$PG_PORT" "$RAY_PORT" "$RAY_DASHBOARD_PORT")
}

check_free() {
  local name pid port bin f
  for name in "${SERVICES[@]}"; do
    pid="$(running_pid "$name")"
    [[ -z "$pid" ]] || die "stack already running ($name pid $pid); run '$0 down' first"
  done
  # a stack of the other profile in the same dir
  for f in "$RUN"/pids/*.pid; do
    [[ -e "$f" ]] || continue
    [[ -z "$(running_pid "$(basename "$f" .pid)")" ]] || die "stack already running ($(basename "$f" .pid)); run '$0 down' first"
  done
  profile_ports
  for port in "${PORTS[@]}"; do
    ! port_busy "$port" || die "port $HOST:$port is already in use by another process"
  done
  for bin in moto_server mlflow prefect python ray; do
    [[ -x "$VENV/bin/$bin" ]] || die "$VENV/bin/$bin not found (set VENV)"
  done
  [[ "$PROFILE" != postgres ]] || pg_bin >/dev/null
}

up() {
  set_profile
  check_free
  mkdir -p "$RUN/logs" "$RUN/pids" "$PREFECT_HOME"
  echo '*' >"$RUN/.gitignore"
  echo "$PROFILE" >"$RUN/profile"
  trap 'log "start failed; stopping what was started"; down' EXIT

  local i
  if [[ "$PROFILE" == postgres ]]; then
    PG_PASSWORD="$(secret pg_password SKINFLOW_PG_PASSWORD)"
    prefect_auth
    start_ray_head  # Ray starts while the database comes up
    start_postgres
  fi
  start_s3
  start_prefect
  wait_until s3 http_ok "$S3_URL/moto-api/"
  create_bucket
  start_mlflow
  if [[ "$PROFILE" == postgres ]]; then
    wait_until ray-head port_busy "$RAY_PORT"
    start_ray_node
  fi
  wait_until prefect http_ok "$PREFECT_API/health"
  "$VENV/bin/prefect" work-pool create "$POOL" --type process --overwrite >>"$RUN/logs/prefect.log" 2>&1
  create_automations
  wait_until mlflow http_ok "$MLFLOW_URL/health"
  for ((i = 1; i <= WORKERS; i++)); do start_worker "$i"; done
  [[ "$PROFILE" != postgres ]] || wait_until ray-node ray_nodes 2
  wait_until worker workers_online "$WORKERS"

  trap - EXIT
  write_env
  cat <<EOF
skinflow stack is up (profile $PROFILE)
  S3 (moto)   $S3_URL   bucket s3://$BUCKET
  MLflow      $MLFLOW_URL
  Prefect UI  http://$HOST:$PREFECT_PORT   (API $PREFECT_API, pool $POOL, $WORKERS worker(s))
EOF
  if [[ "$PROFILE" == postgres ]]; then
    cat <<EOF
  PostgreSQL  $HOST:$PG_PORT   databases mlflow, prefect (user $PG_USER)
  Ray         $HOST:$RAY_PORT   head + 1 node (token auth; the token is in the env file)
  Ray jobs    http://$HOST:$RAY_DASHBOARD_PORT   dashboard and Jobs API (ray job submit)
EOF
  fi
  echo "  source $RUN/env"
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
# shuts down only on the second signal), SIGKILL after 5 s more (a Ray node: SIGKILL after 3 s).
stop() {
  local name="$1" pid
  if [[ "$name" == postgres ]]; then stop_postgres; return 0; fi
  pid="$(running_pid "$name")"
  local grace=10
  [[ "$name" != ray-* ]] || grace=3  # a Ray node drains for 30 s on SIGTERM: nothing to keep
  if [[ -n "$pid" ]]; then
    if signal_group "$pid" TERM "$grace" || { [[ "$name" != ray-* ]] && signal_group "$pid" TERM 5; }; then
      log "$name stopped (pid $pid)"
    else
      signal_group "$pid" KILL 5 || true
      log "$name killed (pid $pid)"
    fi
  fi
  rm -f "$(pid_file "$name")"
}

# Every service with a pid file, in stop order: any not in the profile first, then the
# profile's in reverse start order.
stop_order() {
  local i f name known=" ${SERVICES[*]} "
  for f in "$RUN"/pids/*.pid; do
    [[ -e "$f" ]] || continue
    name="$(basename "$f" .pid)"
    [[ "$known" == *" $name "* ]] || echo "$name"
  done
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do echo "${SERVICES[i]}"; done
}

down() {
  set_profile
  local name d
  # in parallel, by tier: the workers, then the servers and Ray nodes, then the database
  local tier
  for tier in 'worker*' '!(postgres)' postgres; do
    for name in $(stop_order); do
      # shellcheck disable=SC2053
      [[ "$name" == $tier && -f "$(pid_file "$name")" ]] && stop "$name" &
    done
    wait
  done
  rm -f "$RUN/env"
  for name in ray-head ray-node; do  # Ray's session files are not state worth keeping
    if [[ -f "$RUN/$name.tmpdir" ]]; then rm -rf "$(<"$RUN/$name.tmpdir")" "$RUN/$name.tmpdir"; fi
  done
  if [[ "${1:-}" == --purge ]]; then
    if [[ -f "$RUN/postgres.dir" ]]; then d="$(<"$RUN/postgres.dir")"; rm -rf "$d"; fi
    rm -rf "$RUN/postgres.dir" "$RUN/postgres" "$RUN/secrets" "$RUN/mlflow.db" "$RUN/prefect" "$RUN/profile"
    log "purged the stack's databases and secrets"
  fi
}

# restart SERVICE: start one service of a running stack again (e.g. after a fault test killed it).
restart() {
  set_profile
  local name="${1:-}" known=" ${SERVICES[*]} "
  [[ -n "$name" && "$known" == *" $name "* ]] || { echo "usage: $0 restart SERVICE (one of:${known% })" >&2; exit 2; }
  stop "$name"
  mkdir -p "$RUN/logs" "$RUN/pids"
  if [[ "$PROFILE" == postgres ]]; then PG_PASSWORD="$(secret pg_password SKINFLOW_PG_PASSWORD)"; prefect_auth; fi
  case "$name" in
    postgres) start_postgres ;;
    s3) start_s3; wait_until s3 http_ok "$S3_URL/moto-api/" ;;
    mlflow) start_mlflow; wait_until mlflow http_ok "$MLFLOW_URL/health" ;;
    prefect) start_prefect; wait_until prefect http_ok "$PREFECT_API/health" ;;
    ray-head) start_ray_head; wait_until ray-head port_busy "$RAY_PORT" ;;
    ray-node) start_ray_node; wait_until ray-node ray_nodes 2 ;;
    worker*)
      local i="${name#worker}" before
      i="${i:-1}"
      before="$(worker_starts "$i")"
      start_worker "$i"
      wait_until "$name" worker_started "$i" "$before" ;;
  esac
}

status() {
  set_profile
  local name pid up=0
  for name in "${SERVICES[@]}"; do
    pid="$(running_pid "$name")"
    if [[ -n "$pid" ]]; then up=$((up + 1)); printf '%-8s running  pid %s\n' "$name" "$pid"
    else printf '%-8s stopped\n' "$name"; fi
  done
  http_ok "$S3_URL/moto-api/" && echo "s3       healthy  $S3_URL" || echo "s3       unreachable"
  http_ok "$MLFLOW_URL/health" && echo "mlflow   healthy  $MLFLOW_URL" || echo "mlflow   unreachable"
  http_ok "$PREFECT_API/health" && echo "prefect  healthy  $PREFECT_API" || echo "prefect  unreachable"
  if [[ "$PROFILE" == postgres ]]; then
    port_busy "$PG_PORT" && echo "postgres listening $HOST:$PG_PORT" || echo "postgres unreachable"
    port_busy "$RAY_PORT" && echo "ray      listening $HOST:$RAY_PORT" || echo "ray      unreachable"
  fi
  ((up == ${#SERVICES[@]})) && return 0
  ((up == 0)) && return 3
  return 1
}

# describe: the topology `up` starts with this configuration, one key=value a line, no secrets
# (tests compare it with infra/docker-compose.yml and infra/ray-cluster.yaml).
describe() {
  set_profile
  local store="sqlite:///$RUN/mlflow.db" prefect_db="sqlite+aiosqlite:///$PREFECT_HOME/prefect.db" ray_nodes=0
  local prefect_auth_mode=none
  if [[ "$PROFILE" == postgres ]]; then store="$PG_MLFLOW_URL"; prefect_db="$PG_PREFECT_URL"; ray_nodes=2; prefect_auth_mode=basic; fi
  cat <<EOF
profile=$PROFILE
prefect_api_auth=$prefect_auth_mode
services=${SERVICES[*]}
mlflow_backend_store_uri=$store
mlflow_artifacts_destination=$ARTIFACTS
prefect_database_url=$prefect_db
s3_bucket=$BUCKET
work_pool=$POOL
work_pool_type=process
prefect_workers=$WORKERS
flows_heartbeat_frequency=$HEARTBEAT
automations=$(sed -n 's/^name: *//p' "$REPO"/infra/automations/*.yaml | sort | tr '\n' ' ' | sed 's/ $//')
ray_nodes=$ray_nodes
s3_port=$S3_PORT
mlflow_port=$MLFLOW_PORT
prefect_port=$PREFECT_PORT
EOF
  if [[ "$PROFILE" == postgres ]]; then
    printf 'postgres_port=%s\npostgres_user=%s\nray_port=%s\nray_dashboard_port=%s\n' \
      "$PG_PORT" "$PG_USER" "$RAY_PORT" "$RAY_DASHBOARD_PORT"
  fi
}

# `--db PROFILE` after the verb
VERB="${1:-}"; shift || true
if [[ "${1:-}" == --db ]]; then
  [[ -n "${2:-}" ]] || { echo "usage: $0 $VERB --db sqlite|postgres" >&2; exit 2; }
  PROFILE="$2"; shift 2
elif [[ "${1:-}" == --db=* ]]; then
  PROFILE="${1#--db=}"; shift
fi

case "$VERB" in
  up) up ;;
  down) down "$@" ;;
  status) status ;;
  describe) describe ;;
  restart) restart "$@" ;;
  *) echo "usage: $0 up [--db sqlite|postgres] | down [--purge] | status | describe [--db ...] | restart SERVICE" >&2; exit 2 ;;
esac
