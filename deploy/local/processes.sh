# Shared by stack.sh and observe.sh (sourced, with PID_DIR and LOG_DIR set): start a
# process in its own group with its pid recorded, and stop exactly what was recorded:
# the whole group, whether or not its leader is still alive (a crashed leader's children
# are still in its group).

STARTED=()  # the names `start` was given: watched by stack.sh while it waits

running() {  # name -> 0 when its recorded process is alive
  local pidfile=$PID_DIR/$1.pid
  [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

start() {  # name, command...: start in the background, in its own process group
  local name=$1; shift
  STARTED+=("$name")
  if running "$name"; then
    echo "  $name already running (pid $(cat "$PID_DIR/$name.pid"))"
    return
  fi
  stop "$name"  # what a crashed run of it left behind
  setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$PID_DIR/$name.pid"
  echo "  started $name (pid $!), log $LOG_DIR/$name.log"
}

stop() {  # name: SIGTERM its process group, then SIGKILL what is left after a grace period
  local pidfile=$PID_DIR/$1.pid
  [[ -f $pidfile ]] || return 0
  local pid; pid=$(cat "$pidfile")
  # setsid made the recorded process the leader of a group of its own: its pid names
  # the group, which lives on while any member does.
  if kill -0 -- "-$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "  stopped $1 (process group $pid)"
  fi
  rm -f "$pidfile"
}

exited() {  # name: say that it exited, with the end of its log (where the reason is)
  echo "$1 exited; the end of $LOG_DIR/$1.log:" >&2
  tail -n 40 "$LOG_DIR/$1.log" >&2
}
