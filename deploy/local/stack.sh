#!/usr/bin/env bash
# The local stack behind `make up` / `make down`: every process it starts is
# recorded in $RUN_DIR/pids, and `down` stops exactly those.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUN_DIR=${RUN_DIR:-.run}
[[ $RUN_DIR = /* ]] || RUN_DIR=$PWD/$RUN_DIR  # nginx resolves relative paths elsewhere
LOG_DIR=$RUN_DIR/logs
PID_DIR=$RUN_DIR/pids
WORKER_PORT=${WORKER_PORT:-8100}  # the first worker's port; worker i listens on WORKER_PORT+i
WORKERS=${WORKERS:-2}
PROFILE=${PROFILE:-cpu-tiny}
GATEWAY_REPLICAS=${GATEWAY_REPLICAS:-2}
GATEWAY_BASE_PORT=${GATEWAY_BASE_PORT:-8001}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8080}
NGINX_STATUS_PORT=${NGINX_STATUS_PORT:-8089}  # stub_status only, loopback (make observe scrapes it)
BATCH_METRICS_PORT=${BATCH_METRICS_PORT:-9450}  # the batch runner's /metrics, loopback
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-900}
# One limit for both hops: Nginx refuses what the gateway would refuse.
export GATEWAY_MAX_BODY_BYTES=${GATEWAY_MAX_BODY_BYTES:-16777216}
export GATEWAY_TOTAL_TIMEOUT_S=${GATEWAY_TOTAL_TIMEOUT_S:-600}
worker_urls=()
for i in $(seq 0 $((WORKERS - 1))); do worker_urls+=("http://127.0.0.1:$((WORKER_PORT + i))"); done
export GATEWAY_WORKER_URLS=${GATEWAY_WORKER_URLS:-$(IFS=,; echo "${worker_urls[*]}")}
WORKER_PYTHON=.venv-worker/bin/python
if [[ $PROFILE == triton-* ]]; then
  # Triton workers: their own environment, metrics on the worker's port + 100, and the
  # gateway told to speak KServe v2 to them (one pool, engine "triton").
  WORKER_PYTHON=.venv-triton/bin/python
  export GATEWAY_WORKER_POOLS=${GATEWAY_WORKER_POOLS:-$(.venv/bin/python -m worker.triton.pools \
    --profile "$PROFILE" --metrics-port-offset 100 "${worker_urls[@]}")}
  unset GATEWAY_WORKER_URLS
fi
# The interaction log: MariaDB on this machine, database and user created by `up`.
export GATEWAY_LOG_DATABASE_URL=${GATEWAY_LOG_DATABASE_URL:-mysql://vlm:vlm@127.0.0.1:3306/vlm_serve}
DB_ADMIN_URL=${DB_ADMIN_URL:-mysql://root@127.0.0.1:3306}

mkdir -p "$LOG_DIR" "$PID_DIR"

source deploy/local/processes.sh

wait_for() {  # description, command...: poll until the command succeeds; fail at once
  local what=$1; shift  # when a process started by `up` exits meanwhile
  local deadline=$((SECONDS + STARTUP_TIMEOUT)) name
  until "$@" >/dev/null 2>&1; do
    for name in "${STARTED[@]}"; do
      if ! running "$name"; then
        exited "$name"
        echo "make up failed waiting for $what (\`make down\` stops the rest)" >&2
        return 1
      fi
    done
    if (( SECONDS > deadline )); then echo "timed out waiting for $what" >&2; return 1; fi
    sleep 1
  done
}

sample_request() {  # path: a chat request with the bundled sample product photo
  PROFILE=$PROFILE .venv/bin/python - "$1" <<'PY'
import json, os, sys
from worker.profiles import resolve_profile
from worker.sample_image import png_data_uri
body = {
    "model": resolve_profile(os.environ["PROFILE"], os.environ).served_model_name,
    "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_uri(320, 240, seed=7)}},
        {"type": "text", "text": "Is this bag real leather?"},
    ]}],
    "max_tokens": 32,
}
open(sys.argv[1], "w").write(json.dumps(body))
PY
}

demo_key() {  # a key for demos and `make loadtest`: created once, kept (mode 600) in a file
  local file=$RUN_DIR/demo-api-key keys=(.venv/bin/python -m gateway.auth --url "$GATEWAY_LOG_DATABASE_URL")
  if [[ -s $file ]]; then
    local id; id=$(cut -d- -f2 "$file")
    # Still there and not revoked (the database may have been dropped since): keep it.
    if "${keys[@]}" list --json | grep -q "\"key_id\": \"$id\".*\"revoked_at\": null"; then return; fi
  fi
  # Limits far above what this machine serves, so load tests measure the stack, not them.
  (umask 077 && "${keys[@]}" create --name make-up-demo --rpm 1000000 --tpm 1000000000 \
    --concurrent 10000 > "$file.tmp") && mv "$file.tmp" "$file"
}

batch_token() {  # the batch runner's secret, shared with the gateways: made once, kept (mode 600)
  local file=$RUN_DIR/batch-runner-token
  [[ -s $file ]] || (umask 077 && .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))' > "$file")
  export GATEWAY_BATCH_RUNNER_TOKEN=${GATEWAY_BATCH_RUNNER_TOKEN:-$(cat "$file")}
}

up() {
  echo "starting the stack (logs in $LOG_DIR)"
  batch_token
  # Idempotent: creates the database and user when missing, then migrates to head.
  .venv/bin/python -m gateway.interactions --url "$GATEWAY_LOG_DATABASE_URL" migrate \
    --create-db --admin-url "$DB_ADMIN_URL"
  # API keys are required (GATEWAY_AUTH_ENABLED=false make up turns them off, loudly).
  demo_key
  # One worker per core on a CPU machine (WORKER_CPU_THREADS_BIND=i pins worker i to core
  # i); set it empty (or to "nobind") to let them float.
  local cores; cores=$(nproc)
  for i in $(seq 0 $((WORKERS - 1))); do
    local wport=$((WORKER_PORT + i)) bind=${WORKER_CPU_THREADS_BIND-$((i % cores))}
    start "worker-$wport" env WORKER_READY_FILE="$RUN_DIR/worker-$wport.ready" \
      ${bind:+WORKER_CPU_THREADS_BIND=$bind} WORKER_METRICS_PORT=$((wport + 100)) \
      WORKER_RUN_DIR="$RUN_DIR/triton-$wport" \
      "$WORKER_PYTHON" -m worker serve --profile "$PROFILE" --port "$wport"
  done
  for i in $(seq 0 $((WORKERS - 1))); do
    wait_for "worker $((WORKER_PORT + i))'s warm-up" test -f "$RUN_DIR/worker-$((WORKER_PORT + i)).ready"
  done

  local upstreams=()
  for i in $(seq 0 $((GATEWAY_REPLICAS - 1))); do
    local port=$((GATEWAY_BASE_PORT + i))
    # One interaction-log spool per replica: each writer locks its own.
    start "gateway-$port" env GATEWAY_LOG_SPOOL_PATH="$RUN_DIR/interactions/spool-$port.jsonl" \
      .venv/bin/python -m gateway --host 127.0.0.1 --port "$port" --graceful-timeout 30
    upstreams+=(--gateway "127.0.0.1:$port")
  done

  .venv/bin/python nginx/render.py "$RUN_DIR/nginx.conf" --listen "$HOST:$PORT" "${upstreams[@]}" \
    --run-dir "$RUN_DIR/nginx" --log-dir "$LOG_DIR" --status-listen "127.0.0.1:$NGINX_STATUS_PORT" \
    --max-body-bytes "$GATEWAY_MAX_BODY_BYTES" --read-timeout "$((${GATEWAY_TOTAL_TIMEOUT_S%.*} + 10))"
  nginx -t -q -c "$RUN_DIR/nginx.conf" -e "$LOG_DIR/nginx-error.log"
  if running nginx; then
    kill -HUP "$(cat "$PID_DIR/nginx.pid")"  # reload the freshly rendered configuration
  else
    start nginx nginx -c "$RUN_DIR/nginx.conf" -e "$LOG_DIR/nginx-error.log" -g 'daemon off;'
  fi
  wait_for "/readyz through nginx" curl -sf "http://$HOST:$PORT/readyz"
  # One batch runner (gateway/batch/): lines go through Nginx like every request.
  start batch-runner env GATEWAY_BATCH_GATEWAY_URL="http://$HOST:$PORT" \
    GATEWAY_BATCH_METRICS_PORT="$BATCH_METRICS_PORT" .venv/bin/python -m gateway.batch

  sample_request "$RUN_DIR/sample-request.json"
  echo "ready: http://$HOST:$PORT (nginx -> $GATEWAY_REPLICAS gateways -> $WORKERS workers, profile $PROFILE)"
  echo "try:"
  echo "  curl -s http://$HOST:$PORT/v1/chat/completions -H 'Content-Type: application/json' \\"
  echo "    -H \"Authorization: Bearer \$(cat $RUN_DIR/demo-api-key)\" -d @$RUN_DIR/sample-request.json"
  if [[ $PROFILE == *cpu-tiny ]]; then
    echo "(cpu-tiny has random weights: its answers are noise, by design)"
  fi
}

down() {
  # Front to back, so nothing new reaches a process that is going away.
  stop batch-runner
  stop nginx
  for pidfile in "$PID_DIR"/gateway-*.pid; do
    [[ -e $pidfile ]] && stop "$(basename "$pidfile" .pid)"
  done
  for pidfile in "$PID_DIR"/worker*.pid; do
    [[ -e $pidfile ]] && stop "$(basename "$pidfile" .pid)"
  done
  return 0
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
