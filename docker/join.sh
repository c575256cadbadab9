#!/bin/sh
# Join the Ray cluster as a node without CPUs or GPUs (so neither Flower's clients nor attack
# jobs land here), run the given command as the cluster's driver, then leave the cluster.
# A Ray driver needs a Ray node on its own machine; this container becomes one.
set -e
ray start --address="${RAY_HEAD:-head:6379}" --num-cpus=0 --num-gpus=0 --disable-usage-stats
trap 'ray stop >/dev/null 2>&1 || true' EXIT
"$@"
