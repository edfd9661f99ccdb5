#!/usr/bin/env bash
# Synchronous data parallelism across processes/machines (MultiWorkerMirroredStrategy), wired by TF_CONFIG.
# Every worker runs the same command on the same config; worker 0 is the chief and writes OUTPUT_DIR, the others
# write OUTPUT_DIR.worker<i> (same weights, kept apart so they never overwrite the chief's checkpoint).
#
# Try it on one machine (N workers on 127.0.0.1, free ports):
#   train_scripts/train_multi_worker.sh local 2 [CONFIG] [more `kdet train` arguments]
# On real machines, run this on each machine i = 0, 1, ... with the same WORKERS list (host:port, port open):
#   WORKERS=host1:12345,host2:12345 train_scripts/train_multi_worker.sh worker i [CONFIG] [arguments]
#
# OUTPUT_DIR (default runs/multi_worker) becomes train.output_dir.
set -euo pipefail
MODE=${1:?usage: train_multi_worker.sh local N [CONFIG] [args] | worker INDEX [CONFIG] [args]}
NUMBER=${2:?give the number of local workers, or the worker index of this machine}
CONFIG=${3:-configs/classloc_shapes.yaml}
shift $(( $# > 3 ? 3 : $# ))
OUTPUT_DIR=${OUTPUT_DIR:-runs/multi_worker}

tf_config() {  # tf_config WORKERS_CSV INDEX -> the TF_CONFIG JSON
  python - "$1" "$2" <<'PY'
import json, sys
workers = [w for w in sys.argv[1].split(",") if w]
print(json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": int(sys.argv[2])}}))
PY
}

free_ports() {  # free_ports N -> 127.0.0.1:port,... (ports free right now)
  python -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
[s.bind(("127.0.0.1", 0)) for s in socks]
print(",".join("127.0.0.1:%d" % s.getsockname()[1] for s in socks))' "$1"
}

output_dir() {  # output_dir INDEX
  if [ "$1" -eq 0 ]; then echo "$OUTPUT_DIR"; else echo "$OUTPUT_DIR.worker$1"; fi
}

run_worker() {  # run_worker WORKERS_CSV INDEX [args]
  local workers=$1 index=$2
  shift 2
  TF_CONFIG=$(tf_config "$workers" "$index") exec kdet train --config "$CONFIG" \
    --set train.strategy=multi_worker --set "train.output_dir=$(output_dir "$index")" "$@"
}

case "$MODE" in
  worker)
    : "${WORKERS:?set WORKERS=host:port,host:port,... (the same list on every machine)}"
    run_worker "$WORKERS" "$NUMBER" "$@"
    ;;
  local)
    WORKERS=$(free_ports "$NUMBER")
    echo "workers: $WORKERS (logs of workers 1.. in $OUTPUT_DIR.worker<i>.log)" >&2
    mkdir -p "$(dirname "$OUTPUT_DIR")"
    pids=()
    trap 'for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done' EXIT
    for ((i = 1; i < NUMBER; i++)); do
      (run_worker "$WORKERS" "$i" "$@") > "$OUTPUT_DIR.worker$i.log" 2>&1 &
      pids+=($!)
    done
    status=0
    (run_worker "$WORKERS" 0 "$@") || status=$?
    for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
    pids=()
    exit $status
    ;;
  *)
    echo "unknown mode $MODE: use local or worker" >&2
    exit 2
    ;;
esac
