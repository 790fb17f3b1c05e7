#!/usr/bin/env bash
# The local stack behind `make up` / `make down`: every process it starts is
# recorded in $RUN_DIR/pids, and `down` stops exactly those.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUN_DIR=${RUN_DIR:-.run}
LOG_DIR=$RUN_DIR/logs
PID_DIR=$RUN_DIR/pids
WORKER_PORT=${WORKER_PORT:-8100}
PROFILE=${PROFILE:-cpu-tiny}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-900}

mkdir -p "$LOG_DIR" "$PID_DIR"

running() {  # name -> 0 when its recorded process is alive
  local pidfile=$PID_DIR/$1.pid
  [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

start() {  # name, command...: start in the background, in its own process group
  local name=$1; shift
  if running "$name"; then
    echo "  $name already running (pid $(cat "$PID_DIR/$name.pid"))"
    return
  fi
  setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$PID_DIR/$name.pid"
  echo "  started $name (pid $!), log $LOG_DIR/$name.log"
}

stop() {  # name: SIGTERM its process group, then SIGKILL after a grace period
  local pidfile=$PID_DIR/$1.pid
  [[ -f $pidfile ]] || return 0
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "  stopped $1 (pid $pid)"
  fi
  rm -f "$pidfile"
}

wait_for() {  # description, command...: poll until the command succeeds
  local what=$1; shift
  local deadline=$((SECONDS + STARTUP_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS > deadline )); then echo "timed out waiting for $what" >&2; return 1; fi
    sleep 1
  done
}

sample_request() {  # path: a chat request with the bundled sample product photo
  .venv/bin/python - "$1" <<'PY'
import json, sys
from worker.sample_image import png_data_uri
body = {
    "model": "qwen3-vl-tiny",
    "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_uri(320, 240, seed=7)}},
        {"type": "text", "text": "Is this bag real leather?"},
    ]}],
    "max_tokens": 32,
}
open(sys.argv[1], "w").write(json.dumps(body))
PY
}

up() {
  echo "starting the stack (logs in $LOG_DIR)"
  start worker env WORKER_READY_FILE="$RUN_DIR/worker-$WORKER_PORT.ready" \
    .venv-worker/bin/python -m worker serve --profile "$PROFILE" --port "$WORKER_PORT"
  wait_for "the worker's warm-up" test -f "$RUN_DIR/worker-$WORKER_PORT.ready"
  sample_request "$RUN_DIR/sample-request.json"
  echo "ready: worker on http://127.0.0.1:$WORKER_PORT (profile $PROFILE)"
  echo "try:"
  echo "  curl -s http://127.0.0.1:$WORKER_PORT/v1/chat/completions -H 'Content-Type: application/json' -d @$RUN_DIR/sample-request.json"
  if [[ $PROFILE == cpu-tiny ]]; then
    echo "(cpu-tiny has random weights: its answers are noise, by design)"
  fi
}

down() {
  for name in worker; do stop "$name"; done
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
