#!/bin/sh
# Join the Ray cluster as a node without CPUs or GPUs (so neither Flower's clients nor attack
# jobs land here), run the given command as the cluster's driver, then leave the cluster.
# A Ray driver needs a Ray node on its own machine; this container becomes one. `docker stop`
# (SIGTERM) and Ctrl-C (SIGINT) are passed on to the command, which stops cleanly with its
# results kept; the script exits with the command's own code.
set -e
ray start --address="${RAY_HEAD:-head:6379}" --num-cpus=0 --num-gpus=0 --disable-usage-stats
trap 'ray stop >/dev/null 2>&1 || true' EXIT
set +e
"$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM
trap 'kill -INT "$child" 2>/dev/null' INT
wait "$child"
status=$?
while kill -0 "$child" 2>/dev/null; do  # a signal ended `wait` early: wait for the command itself
    wait "$child"
    status=$?
done
exit "$status"
