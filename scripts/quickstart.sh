#!/usr/bin/env bash
# capra quickstart: two throwaway PostgreSQL clusters on loopback ports stand
# for two hosts; capra replicates pgbench data from one to the other.
# Everything, the daemon's pid file and log included, lives under one temp
# directory and is removed at the end (KEEP=1 keeps the clusters and the
# daemon running and prints the capra options that reach them).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

# What the machine needs: the PostgreSQL server binaries and a Rust build.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    say "installing PostgreSQL (server binaries only are used)"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql postgresql-contrib libssl-dev pkg-config >/dev/null
fi
PGBIN=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")

# CAPRA_BIN=PATH runs that binary instead of building one (the test suite
# runs this script with the binary it built).
if [ -n "${CAPRA_BIN:-}" ]; then
    CAPRA=$CAPRA_BIN
else
    say "building capra"
    cargo build --quiet
    CAPRA="${CARGO_TARGET_DIR:-$ROOT/target}/debug/capra"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/capra-quickstart.XXXXXX")
chmod 755 "$WORK"
AS_PG=()
if [ "$(id -u)" -eq 0 ]; then AS_PG=(runuser -u postgres --); chown postgres: "$WORK"; fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORTS=()
start_cluster() { # name -> sets port in PORTS
    local name=$1 port try
    "${AS_PG[@]}" "$PGBIN/initdb" -D "$WORK/$name" --no-sync -A trust -E UTF8 --locale=C.UTF-8 -U postgres >/dev/null
    cat >>"$WORK/$name/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
fsync = off
synchronous_commit = off
EOF
    # The port is picked just before the start; on a busy machine another
    # program may take it meanwhile, so a second one is tried.
    for try in 1 2; do
        port=$(free_port)
        echo "port = $port" >>"$WORK/$name/postgresql.conf"   # the last line wins
        "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$WORK/$name" -l "$WORK/$name.log" -w start >/dev/null && break
        if [ "$try" = 2 ]; then echo "cannot start the cluster $name (see $WORK/$name.log)" >&2; exit 1; fi
    done
    "$PGBIN/psql" -qX -h 127.0.0.1 -p "$port" -U postgres -c "CREATE ROLE capra SUPERUSER LOGIN" postgres
    PORTS+=("$port")
}
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then
        echo; echo "Kept under $WORK: the clusters (ports ${PORTS[*]}) and, if it started, the daemon."
        if [ ${#G[@]} -gt 0 ]; then
            echo "Use capra with:"
            echo "  $CAPRA ${G[*]} status"
        fi
        echo "Stop everything with:"
        [ ${#G[@]} -gt 0 ] && echo "  $CAPRA ${G[*]} stop"
        for c in hostA hostB; do echo "  ${AS_PG[*]} $PGBIN/pg_ctl -D $WORK/$c stop"; done
        echo "  rm -rf $WORK"
        return
    fi
    # Only the daemon this script started (G is set once its catalog is).
    if [ ${#G[@]} -gt 0 ]; then "$CAPRA" "${G[@]}" stop >/dev/null 2>&1 || true; fi
    for c in hostA hostB; do
        [ -f "$WORK/$c/postmaster.pid" ] && "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$WORK/$c" -m fast stop >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
G=()
trap cleanup EXIT

say "starting two throwaway clusters (hostA = source, hostB = target)"
start_cluster hostA; A=${PORTS[0]}
start_cluster hostB; B=${PORTS[1]}
echo "hostA: 127.0.0.1:$A   hostB: 127.0.0.1:$B"
PSQL_A=("$PGBIN/psql" -qX -h 127.0.0.1 -p "$A" -U postgres)
PSQL_B=("$PGBIN/psql" -qX -h 127.0.0.1 -p "$B" -U postgres)

say "loading sample data on hostA (pgbench -i, plus a mixed-case table) and copying the schema to hostB"
for p in "$A" "$B"; do "$PGBIN/createdb" -h 127.0.0.1 -p "$p" -U postgres shop; done
"$PGBIN/pgbench" -i -q -s 1 -h 127.0.0.1 -p "$A" -U postgres shop 2>/dev/null
"${PSQL_A[@]}" shop -c 'CREATE TABLE "AO_92296B_AORECENTLY_VIEWED" ("ID" bigserial PRIMARY KEY, "CONTENT_ID" bigint, "SEEN" timestamptz DEFAULT now());
  INSERT INTO "AO_92296B_AORECENTLY_VIEWED" ("CONTENT_ID") SELECT g FROM generate_series(1, 1000) g;'
"$PGBIN/pg_dump" -h 127.0.0.1 -p "$A" -U postgres --schema-only shop | "${PSQL_B[@]}" shop >/dev/null

# capra's control database lives on hostA; these are its global options.
# A config file of its own keeps the daemon's pid file and log in $WORK.
mkdir -p "$WORK/run"
printf 'piddir = %s\nlogdest = %s\n' "$WORK/run" "$WORK/capra.log" > "$WORK/capra.conf"
G=(-h 127.0.0.1 -p "$A" -U capra -d capra --config "$WORK/capra.conf")
say "installing capra's control database"
run "$CAPRA" -h 127.0.0.1 -p "$A" -U postgres -d capra install --batch

say "describing the replication"
run "$CAPRA" "${G[@]}" add db source_db dbname=shop host=127.0.0.1 port="$A" user=postgres
run "$CAPRA" "${G[@]}" add db target_db dbname=shop host=127.0.0.1 port="$B" user=postgres
run "$CAPRA" "${G[@]}" add all tables -T pgbench_history db=source_db relgroup=shop_tables
run "$CAPRA" "${G[@]}" add all sequences db=source_db relgroup=shop_tables
run "$CAPRA" "${G[@]}" add dbgroup shop_dbs source_db:source target_db:target
run "$CAPRA" "${G[@]}" add sync shop_sync relgroup=shop_tables dbs=shop_dbs autokick=1 onetimecopy=2
run "$CAPRA" "${G[@]}" validate shop_sync
run "$CAPRA" "${G[@]}" list syncs

say "starting the daemon (it copies the tables into the empty target first: onetimecopy=2)"
START_OUT=$("$CAPRA" "${G[@]}" start "quickstart"); printf '$ %s\n%s\n' "$CAPRA ${G[*]} start quickstart" "$START_OUT"
LOG=${START_OUT##*log: }
LOG=${LOG%% (*}
DAEMON_PID=$(printf '%s' "$START_OUT" | sed -n 's/.*(pid \([0-9]*\)).*/\1/p')
run "$CAPRA" "${G[@]}" kick shop_sync 60
echo "rows on hostB now: $("${PSQL_B[@]}" -tA shop -c 'SELECT count(*) FROM pgbench_accounts')  (hostA: $("${PSQL_A[@]}" -tA shop -c 'SELECT count(*) FROM pgbench_accounts'))"

say "changing data on hostA: pgbench transactions, an update, a delete, a key change"
"$PGBIN/pgbench" -n -t 200 -c 2 -h 127.0.0.1 -p "$A" -U postgres shop 2>/dev/null | grep -E '^(tps|number of transactions actually)' || true
"${PSQL_A[@]}" shop -c "UPDATE pgbench_branches SET filler = 'changed by the quickstart' WHERE bid = 1;
  DELETE FROM \"AO_92296B_AORECENTLY_VIEWED\" WHERE \"ID\" <= 10;
  UPDATE \"AO_92296B_AORECENTLY_VIEWED\" SET \"ID\" = \"ID\" + 100000 WHERE \"ID\" = 11;"
# autokick: each commit starts a run within moments; no kick needed. Wait
# (at most 60 s, on a busy machine) until capra delta shows nothing waiting
# (it says "unknown" and fails when a source does not answer).
deadline=$((SECONDS + 60))
until "$CAPRA" "${G[@]}" delta 2>/dev/null | grep -q '^Total deltas across all targets: 0$'; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "changes still waiting after 60 s:"; "$CAPRA" "${G[@]}" delta || true
        break
    fi
    sleep 0.1
done

say "comparing hostA and hostB (ordered checksums of every table)"
same=1
for t in pgbench_accounts pgbench_branches pgbench_tellers '"AO_92296B_AORECENTLY_VIEWED"'; do
    q="SELECT count(*) || ' rows, md5 ' || md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM $t x"
    a=$("${PSQL_A[@]}" -tA shop -c "$q"); b=$("${PSQL_B[@]}" -tA shop -c "$q")
    if [ "$a" = "$b" ]; then printf '  %-32s identical (%s)\n' "$t" "$a"; else printf '  %-32s DIFFERENT: %s vs %s\n' "$t" "$a" "$b"; same=0; fi
done
say "the same check by capra: row by row, only differing keys travel"
run "$CAPRA" "${G[@]}" compare shop_sync || same=0
echo "pgbench_history (excluded): hostA $("${PSQL_A[@]}" -tA shop -c 'SELECT count(*) FROM pgbench_history') rows, hostB $("${PSQL_B[@]}" -tA shop -c 'SELECT count(*) FROM pgbench_history') rows"

say "status"
run "$CAPRA" "${G[@]}" status
run "$CAPRA" "${G[@]}" status shop_sync
run "$CAPRA" "${G[@]}" delta
echo "last lines of the daemon log ($LOG):"
grep "^($DAEMON_PID) " "$LOG" 2>/dev/null | grep -E " (KID|CTL) " | tail -n 6 || true

if [ "${KEEP:-0}" != 1 ]; then
    say "stopping the daemon"
    run "$CAPRA" "${G[@]}" stop "quickstart done"
fi
if [ "$same" = 1 ]; then
    say "done: every replicated table is identical on hostB"
else
    say "done, but some tables differ (see above)"; exit 1
fi
