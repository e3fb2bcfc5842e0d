#!/usr/bin/env bash
# capra's benchmark: builds in release mode, starts its own throwaway
# clusters, and prints figures (initial copy vs a psql pipe, delta apply
# rows/s, lag under pgbench load, source TPS with and without capture,
# daemon memory, multi-master convergence, compare of a large table,
# takeover times of a standby daemon, the metrics' cost).
# Usage: scripts/bench.sh [SCALE...] [copy] [lag] [tps] [mm] [thousand]
#   [compare] [ha] [metrics] [rows=N (compare's table, default 5000000)] [reps=N]
#   (default: everything at scale 10, 5 repetitions; naming parts runs only those)
set -euo pipefail
cd "$(dirname "$0")/.."
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "needs the PostgreSQL server binaries: apt-get install postgresql" >&2; exit 1; }
cargo build --release --quiet --bin capra --example bench
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(/usr/lib/postgresql/*/bin/postgres --version | tail -1)"
exec target/release/examples/bench target/release/capra "$@"
