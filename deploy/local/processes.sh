# Shared by stack.sh and observe.sh (sourced, with PID_DIR and LOG_DIR set): start a
# process in its own group with its pid recorded, and stop exactly what was recorded.

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
