#!/usr/bin/env bash
# Train on one device (TensorFlow's default strategy).
#
#   train_scripts/train_single.sh [CONFIG] [more `kdet train` arguments]
#   train_scripts/train_single.sh configs/classloc_shapes.yaml --set train.epochs=2
set -euo pipefail
CONFIG=${1:-configs/classloc_shapes.yaml}
shift $(( $# > 0 ? 1 : 0 ))
exec kdet train --config "$CONFIG" --set train.strategy=none "$@"
