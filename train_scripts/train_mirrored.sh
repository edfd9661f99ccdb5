#!/usr/bin/env bash
# Synchronous data parallelism in one process (MirroredStrategy): every GPU, or on a CPU-only machine
# KDET_CPU_DEVICES logical CPUs (default 2). train.batch_size is the global batch, split across the replicas.
#
#   train_scripts/train_mirrored.sh [CONFIG] [more `kdet train` arguments]
#   KDET_CPU_DEVICES=4 train_scripts/train_mirrored.sh configs/classloc_shapes.yaml --set train.batch_size=64
set -euo pipefail
CONFIG=${1:-configs/classloc_shapes.yaml}
shift $(( $# > 0 ? 1 : 0 ))
export KDET_CPU_DEVICES=${KDET_CPU_DEVICES:-2}
exec kdet train --config "$CONFIG" --set train.strategy=mirrored "$@"
