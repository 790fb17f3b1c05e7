#!/usr/bin/env bash
# `make observe`: Prometheus and Alertmanager (Debian packages) with the shipped rules and
# example config, the Nginx, Redis and MySQL exporters, and the front door's two signals
# (the blackbox exporter sending a real request through Nginx, mtail counting Nginx's own
# answers from its access log), next to `make up`, all on loopback ports. Every process is
# recorded in $RUN_DIR/pids/obs-*.pid; `down` (run by `make down`) stops exactly those.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUN_DIR=${RUN_DIR:-.run}
[[ $RUN_DIR = /* ]] || RUN_DIR=$PWD/$RUN_DIR
LOG_DIR=$RUN_DIR/logs
PID_DIR=$RUN_DIR/pids
OBS_DIR=$RUN_DIR/observe
# What `make up` runs (same defaults as deploy/local/stack.sh).
WORKER_PORT=${WORKER_PORT:-8100}
WORKERS=${WORKERS:-2}
GATEWAY_REPLICAS=${GATEWAY_REPLICAS:-2}
GATEWAY_BASE_PORT=${GATEWAY_BASE_PORT:-8001}
NGINX_STATUS_PORT=${NGINX_STATUS_PORT:-8089}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8080}
PROFILE=${PROFILE:-cpu-tiny}
BATCH_METRICS_PORT=${BATCH_METRICS_PORT:-9450}
# The observers' own ports.
PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090}
ALERTMANAGER_PORT=${ALERTMANAGER_PORT:-9093}
NGINX_EXPORTER_PORT=${NGINX_EXPORTER_PORT:-9113}
REDIS_EXPORTER_PORT=${REDIS_EXPORTER_PORT:-9121}
MYSQLD_EXPORTER_PORT=${MYSQLD_EXPORTER_PORT:-9104}
BLACKBOX_EXPORTER_PORT=${BLACKBOX_EXPORTER_PORT:-9115}
MTAIL_PORT=${MTAIL_PORT:-3903}
SCRAPE_INTERVAL=${SCRAPE_INTERVAL:-5s}
REDIS_ADDR=${REDIS_ADDR:-redis://127.0.0.1:6379}
MYSQL_DSN=${MYSQL_DSN:-root:@(127.0.0.1:3306)/}

mkdir -p "$LOG_DIR" "$PID_DIR" "$OBS_DIR"

source deploy/local/processes.sh

wait_http() {  # url: until it answers 200 (30 s)
  for _ in $(seq 60); do curl -sf -o /dev/null "$1" && return 0; sleep 0.5; done
  echo "timed out waiting for $1" >&2; return 1
}

config() {  # $OBS_DIR/prometheus.yml for what `make up` runs
  local targets=()
  for i in $(seq 0 $((GATEWAY_REPLICAS - 1))); do
    targets+=(--gateway "127.0.0.1:$((GATEWAY_BASE_PORT + i))")
  done
  for i in $(seq 0 $((WORKERS - 1))); do
    if [[ $PROFILE == triton-* ]]; then
      # Triton's own metrics port (deploy/local/stack.sh: the worker's port + 100).
      targets+=(--triton-worker "127.0.0.1:$((WORKER_PORT + i + 100))")
    else
      targets+=(--worker "127.0.0.1:$((WORKER_PORT + i))")
    fi
  done
  .venv/bin/python -m deploy.prometheus.config "$OBS_DIR/prometheus.yml" "${targets[@]}" \
    --nginx-exporter "127.0.0.1:$NGINX_EXPORTER_PORT" \
    --redis-exporter "127.0.0.1:$REDIS_EXPORTER_PORT" \
    --mysqld-exporter "127.0.0.1:$MYSQLD_EXPORTER_PORT" \
    --alertmanager "127.0.0.1:$ALERTMANAGER_PORT" --batch-runner "127.0.0.1:$BATCH_METRICS_PORT" \
    --blackbox-exporter "127.0.0.1:$BLACKBOX_EXPORTER_PORT" \
    --front-door "http://$HOST:$PORT/v1/chat/completions" \
    --front-door-log "127.0.0.1:$MTAIL_PORT" \
    --scrape-interval "$SCRAPE_INTERVAL" --evaluation-interval "$SCRAPE_INTERVAL"
  promtool check config "$OBS_DIR/prometheus.yml" >/dev/null
}

up() {
  echo "starting Prometheus, Alertmanager and the exporters (logs in $LOG_DIR)"
  config
  amtool check-config deploy/alertmanager/alertmanager.yml >/dev/null
  # The probe asks the served model with `make up`'s demo key (when keys are on).
  local model key_args=()
  model=$(PROFILE=$PROFILE .venv/bin/python -c \
    'import os; from worker.profiles import resolve_profile as r; print(r(os.environ["PROFILE"], os.environ).served_model_name)')
  [[ -f $RUN_DIR/demo-api-key ]] && key_args=(--api-key-file "$RUN_DIR/demo-api-key")
  .venv/bin/python -m deploy.prometheus.blackbox "$OBS_DIR/blackbox.yml" --model "$model" "${key_args[@]}"
  touch "$LOG_DIR/nginx-access.json"  # mtail follows it from its end, also before `make up`

  # It exits when Nginx is not up yet; with retries it waits for `make up` instead.
  start obs-nginx-exporter prometheus-nginx-exporter \
    -nginx.scrape-uri "http://127.0.0.1:$NGINX_STATUS_PORT/stub_status" \
    -nginx.retries 100000 -nginx.retry-interval 2s \
    -web.listen-address "127.0.0.1:$NGINX_EXPORTER_PORT"
  start obs-blackbox-exporter prometheus-blackbox-exporter \
    --config.file="$OBS_DIR/blackbox.yml" --web.listen-address="127.0.0.1:$BLACKBOX_EXPORTER_PORT"
  start obs-mtail mtail -progs "$PWD/deploy/prometheus/mtail" -logs "$LOG_DIR/nginx-access.json" \
    -address 127.0.0.1 -port "$MTAIL_PORT" -logtostderr
  start obs-redis-exporter prometheus-redis-exporter -redis.addr "$REDIS_ADDR" \
    -web.listen-address "127.0.0.1:$REDIS_EXPORTER_PORT"
  start obs-mysqld-exporter env DATA_SOURCE_NAME="$MYSQL_DSN" prometheus-mysqld-exporter \
    --web.listen-address="127.0.0.1:$MYSQLD_EXPORTER_PORT" --collect.slave_status
  # --cluster.listen-address= : a single Alertmanager, no gossip port on 0.0.0.0.
  start obs-alertmanager prometheus-alertmanager \
    --config.file="$PWD/deploy/alertmanager/alertmanager.yml" \
    --storage.path="$OBS_DIR/alertmanager" \
    --web.listen-address="127.0.0.1:$ALERTMANAGER_PORT" --cluster.listen-address=
  start obs-prometheus prometheus --config.file="$OBS_DIR/prometheus.yml" \
    --storage.tsdb.path="$OBS_DIR/prometheus" \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" --web.enable-lifecycle

  wait_http "http://127.0.0.1:$PROMETHEUS_PORT/-/ready"
  wait_http "http://127.0.0.1:$ALERTMANAGER_PORT/-/ready"
  echo "Prometheus:   http://127.0.0.1:$PROMETHEUS_PORT  (rules: deploy/prometheus/rules/, targets: /targets)"
  echo "Alertmanager: http://127.0.0.1:$ALERTMANAGER_PORT  (config: deploy/alertmanager/alertmanager.yml)"
  echo "Exporters:    nginx :$NGINX_EXPORTER_PORT, redis :$REDIS_EXPORTER_PORT, mysqld :$MYSQLD_EXPORTER_PORT"
  echo "Front door:   blackbox probe :$BLACKBOX_EXPORTER_PORT (http://$HOST:$PORT), mtail on nginx-access.json :$MTAIL_PORT"
  echo "Dashboards:   import deploy/dashboards/json/*.json into a Grafana with this Prometheus"
}

down() {
  for name in obs-prometheus obs-alertmanager obs-nginx-exporter obs-redis-exporter \
      obs-mysqld-exporter obs-blackbox-exporter obs-mtail; do
    stop "$name"
  done
  return 0
}

case ${1:-} in
  up) up ;;
  down) down ;;
  config) config ;;
  *) echo "usage: $0 up|down|config" >&2; exit 2 ;;
esac
