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
# A signal that comes before the command has started is held and passed on once it has.
child=
pending=
forward() {
    if [ -n "$child" ]; then kill -"$1" "$child" 2>/dev/null; else pending=$1; fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT
# sh starts a background command with SIGINT and SIGQUIT ignored; `env --default-signal` restores
# them, so a Ctrl-C that arrives before the command installs its own handlers still reaches it.
env --default-signal=INT,QUIT "$@" &
child=$!
[ -n "$pending" ] && kill -"$pending" "$child" 2>/dev/null
wait "$child"
status=$?
while kill -0 "$child" 2>/dev/null; do  # a signal ended `wait` early: wait for the command itself
    wait "$child"
    status=$?
done
exit "$status"
