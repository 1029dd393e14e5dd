#!/usr/bin/env bash
# A Ray head on this machine, for `ray job submit`, listening on 127.0.0.1 only.
#
#   cluster/local.sh start    # start it (from the project's virtual environment) and print its addresses
#   cluster/local.sh status   # is it running, and where
#   cluster/local.sh stop     # stop this head only: its own processes, found by its temp dir
#
# Settings (environment): CSG_RAY_PORT (GCS, 6380), CSG_RAY_DASHBOARD_PORT (8266),
# CSG_RAY_CLIENT_PORT (10001), CSG_RAY_AGENT_PORT (52365, the dashboard agent that runs jobs),
# CSG_RAY_CPUS (all cores), CSG_RAY_TEMP (<repo>/.ray/local).
# Jobs submitted here run with the `python` of the environment that ran `start`.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
temp_dir="${CSG_RAY_TEMP:-$repo/.ray/local}"
port="${CSG_RAY_PORT:-6380}"
dashboard_port="${CSG_RAY_DASHBOARD_PORT:-8266}"
client_port="${CSG_RAY_CLIENT_PORT:-10001}"
agent_port="${CSG_RAY_AGENT_PORT:-52365}"

# Ray resolves 127.0.0.1 to the machine's outward address unless it is told this is a
# single-machine cluster; with this set, the GCS, raylet, agents and workers bind loopback.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# Every worker of this head inherits the address of its state API. Ray Train's placement-group
# cleaner asks that API without an address; left to guess, it fails when a second Ray runs on
# the machine ("Found multiple active Ray instances") and a run's CPUs can stay held.
export RAY_API_SERVER_ADDRESS="http://127.0.0.1:$dashboard_port"
# Token authentication on. `ray start` only reads a token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
# ~/.ray/auth_token) and never makes one, so `start` generates it the first time.
export RAY_AUTH_MODE=token

head_pids() {
  # Every process of this head carries its temp dir (or, for the client server, its GCS port).
  pgrep -f -- "$temp_dir/" || true
  pgrep -f -- "ray.util.client.server --address=127.0.0.1:$port " || true
}

bucket_pids() {
  # $1: raylet, gcs, or rest (every other process of this head)
  local pid args
  for pid in $(head_pids | sort -u); do
    args="$(ps -o args= -p "$pid" 2>/dev/null)" || continue
    case "$1:$args" in
      raylet:*/raylet/raylet\ *|gcs:*/gcs/gcs_server\ *) echo "$pid" ;;
      rest:*/raylet/raylet\ *|rest:*/gcs/gcs_server\ *) ;;
      rest:*) echo "$pid" ;;
    esac
  done
}

stop_bucket() {
  # SIGTERM, up to 5 s to exit, then SIGKILL.
  local pids alive pid
  pids="$(bucket_pids "$1")"
  [ -z "$pids" ] && return 0
  kill $pids 2>/dev/null || true
  for _ in $(seq 50); do
    alive=""
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
    [ -z "$alive" ] && return 0
    sleep 0.1
  done
  kill -9 $alive 2>/dev/null || true
  forced=" (forced)"
}

print_addresses() {
  cat <<EOF
Ray head on 127.0.0.1
  GCS address:      127.0.0.1:$port        (RAY_ADDRESS for drivers on this machine)
  dashboard / jobs: http://127.0.0.1:$dashboard_port
  temp dir:         $temp_dir
Submit a job:
  RAY_AUTH_MODE=token RAY_ADDRESS=http://127.0.0.1:$dashboard_port ray job submit --working-dir . -- python jobs/train_imagenet.py --data DIR --results /abs/path
(Ray's token authentication is on; the CLI reads the token from ~/.ray/auth_token.)
EOF
}

case "${1:-}" in
  start)
    if [ -n "$(head_pids)" ]; then
      echo "a head is already running from $temp_dir"; print_addresses; exit 0
    fi
    mkdir -p "$temp_dir"
    ray get-auth-token --generate >/dev/null 2>"$temp_dir/token.log" \
      || { cat "$temp_dir/token.log" >&2; exit 1; }
    cpus=()
    [ -n "${CSG_RAY_CPUS:-}" ] && cpus=(--num-cpus "$CSG_RAY_CPUS")
    ray start --head --node-ip-address 127.0.0.1 --port "$port" \
      --dashboard-host 127.0.0.1 --dashboard-port "$dashboard_port" \
      --ray-client-server-port "$client_port" --dashboard-agent-listen-port "$agent_port" \
      --temp-dir "$temp_dir" \
      --disable-usage-stats "${cpus[@]}" >"$temp_dir/start.log" 2>&1 \
      || { cat "$temp_dir/start.log" >&2; exit 1; }
    # Jobs are refused ("no available agent") until the dashboard agent serves its port.
    for _ in $(seq 150); do
      (exec 3<>"/dev/tcp/127.0.0.1/$agent_port") 2>/dev/null && break
      sleep 0.2
    done
    print_addresses
    ;;
  stop)
    if [ -z "$(head_pids)" ]; then echo "no head running from $temp_dir"; exit 0; fi
    # In `ray stop`'s order: the raylet (its workers and agents share its fate), then the rest,
    # the GCS last. SIGTERM to all at once leaves the GCS and raylet waiting on each other ~10 s.
    forced=""
    for bucket in raylet rest gcs; do stop_bucket "$bucket"; done
    if [ -n "$(head_pids)" ]; then kill -9 $(head_pids) 2>/dev/null || true; forced=" (forced)"; fi
    echo "stopped the head in $temp_dir$forced"
    ;;
  status)
    if [ -n "$(head_pids)" ]; then print_addresses; else echo "no head running from $temp_dir"; exit 1; fi
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2; exit 2
    ;;
esac
