# Sourced by scripts/test.sh (not run on its own): provides a real PostgreSQL server for the
# store contract suite (crates/snapshop-store/src/postgres.rs) and exports
# SNAPSHOP_TEST_POSTGRES_URL and SNAPSHOP_REQUIRE_POSTGRES=1, so that those tests fail instead of
# skipping when it is missing. `snapshop_pg_start` picks the first that works of:
#   1. SNAPSHOP_TEST_POSTGRES_URL, when the caller already set it: used as it is;
#   2. a server already answering on $SNAPSHOP_PG_HOST:$SNAPSHOP_PG_PORT (127.0.0.1:5432) on which
#      $SNAPSHOP_PG_USER (postgres) may create a database without a password: a fresh database
#      for this run, dropped by `snapshop_pg_stop`;
#   3. a throwaway server: initdb on a temp dir (trust auth), pg_ctl start on a free loopback
#      port with its socket in that dir, stopped and removed by `snapshop_pg_stop`. It needs
#      Debian's postgresql-15 (`scripts/setup.sh --postgres-test` installs it); as root, the
#      server runs as the `postgres` user (initdb and postgres refuse root), created as a system
#      user only if it does not exist.
# The tests themselves create (and drop) one database per test on that server.

SNAPSHOP_PG_HOST="${SNAPSHOP_PG_HOST:-127.0.0.1}"
SNAPSHOP_PG_PORT="${SNAPSHOP_PG_PORT:-5432}"
SNAPSHOP_PG_USER="${SNAPSHOP_PG_USER:-postgres}"
SNAPSHOP_PG_TMP=""     # the throwaway server's directory, when one was started
SNAPSHOP_PG_RUN_DB=""  # the run's database on an existing server, when one was created
SNAPSHOP_PG_AS=()      # the command prefix that runs the server's binaries (runuser as root)

# The directory of initdb/pg_ctl: $SNAPSHOP_PG_BIN, Debian's version 15, any Debian version, PATH.
snapshop_pg_bindir() {
  local d
  for d in "${SNAPSHOP_PG_BIN:-}" /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
      echo "$d"
      return 0
    fi
  done
  d="$(command -v initdb 2>/dev/null)" && dirname "$d"
}

snapshop_pg_psql() { # HOST PORT DB SQL: one statement, never prompting for a password
  local psql
  psql="$(command -v psql 2>/dev/null || echo "$(snapshop_pg_bindir)/psql")"
  PGCONNECT_TIMEOUT=5 "$psql" -X -q -w -v ON_ERROR_STOP=1 -h "$1" -p "$2" -U "$SNAPSHOP_PG_USER" \
    -d "$3" -c "$4"
}

snapshop_pg_start() {
  export SNAPSHOP_REQUIRE_POSTGRES=1
  if [ -n "${SNAPSHOP_TEST_POSTGRES_URL:-}" ]; then
    echo "postgres: using SNAPSHOP_TEST_POSTGRES_URL as given"
    return 0
  fi
  local bindir isready
  bindir="$(snapshop_pg_bindir || true)"
  isready="$(command -v pg_isready 2>/dev/null || echo "$bindir/pg_isready")"
  if [ -x "$isready" ] && "$isready" -q -t 5 -h "$SNAPSHOP_PG_HOST" -p "$SNAPSHOP_PG_PORT"; then
    local db="snapshop_run_$$_$(date +%s)"
    if snapshop_pg_psql "$SNAPSHOP_PG_HOST" "$SNAPSHOP_PG_PORT" postgres \
      "CREATE DATABASE \"$db\"" 2>/dev/null; then
      SNAPSHOP_PG_RUN_DB="$db"
      export SNAPSHOP_TEST_POSTGRES_URL="postgres://$SNAPSHOP_PG_USER@$SNAPSHOP_PG_HOST:$SNAPSHOP_PG_PORT/$db"
      echo "postgres: the server on $SNAPSHOP_PG_HOST:$SNAPSHOP_PG_PORT, database $db"
      return 0
    fi
    echo "postgres: $SNAPSHOP_PG_HOST:$SNAPSHOP_PG_PORT answers but $SNAPSHOP_PG_USER cannot create a database there; starting a throwaway server"
  fi

  if [ -z "$bindir" ]; then
    echo "postgres: no server answers and initdb is missing (install Debian's postgresql-15: scripts/setup.sh --postgres-test)" >&2
    return 1
  fi
  # Under /tmp, whatever TMPDIR says: the postgres user must be able to reach it.
  SNAPSHOP_PG_TMP="$(mktemp -d /tmp/snapshop-pg.XXXXXX)"
  SNAPSHOP_PG_AS=()
  if [ "$(id -u)" = 0 ]; then
    if ! id -u postgres >/dev/null 2>&1; then
      echo "postgres: creating the system user postgres (initdb and postgres refuse to run as root)"
      useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin postgres
    fi
    chown postgres: "$SNAPSHOP_PG_TMP"
    SNAPSHOP_PG_AS=(runuser -u postgres --)
  fi
  local port
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  # Durability off: the data is thrown away anyway. max_connections covers one pool of 8 per
  # parallel test thread.
  if ! (cd "$SNAPSHOP_PG_TMP" &&
    "${SNAPSHOP_PG_AS[@]}" "$bindir/initdb" -D "$SNAPSHOP_PG_TMP/data" -U postgres -A trust \
      -E UTF8 --no-locale --no-sync >"$SNAPSHOP_PG_TMP/initdb.log" 2>&1 &&
    "${SNAPSHOP_PG_AS[@]}" "$bindir/pg_ctl" -D "$SNAPSHOP_PG_TMP/data" -l "$SNAPSHOP_PG_TMP/server.log" \
      -w -t 60 -o "-p $port -k $SNAPSHOP_PG_TMP -c listen_addresses=127.0.0.1 -c fsync=off \
      -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" start >/dev/null); then
    echo "postgres: the throwaway server did not start:" >&2
    tail -n 20 "$SNAPSHOP_PG_TMP/initdb.log" "$SNAPSHOP_PG_TMP/server.log" >&2 2>/dev/null || true
    return 1
  fi
  SNAPSHOP_PG_USER=postgres
  export SNAPSHOP_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "postgres: started a throwaway server ($bindir) on 127.0.0.1:$port in $SNAPSHOP_PG_TMP"
}

# Drops the run's database or stops and removes the throwaway server; safe to call twice and
# when nothing was started. Never fails (it runs from an EXIT trap).
snapshop_pg_stop() {
  if [ -n "$SNAPSHOP_PG_RUN_DB" ]; then
    snapshop_pg_psql "$SNAPSHOP_PG_HOST" "$SNAPSHOP_PG_PORT" postgres \
      "DROP DATABASE IF EXISTS \"$SNAPSHOP_PG_RUN_DB\" WITH (FORCE)" ||
      echo "postgres: could not drop database $SNAPSHOP_PG_RUN_DB" >&2
    SNAPSHOP_PG_RUN_DB=""
  fi
  if [ -n "$SNAPSHOP_PG_TMP" ]; then
    if [ -f "$SNAPSHOP_PG_TMP/data/postmaster.pid" ]; then
      (cd "$SNAPSHOP_PG_TMP" && "${SNAPSHOP_PG_AS[@]}" "$(snapshop_pg_bindir)/pg_ctl" \
        -D "$SNAPSHOP_PG_TMP/data" -m immediate -w stop >/dev/null 2>&1) ||
        echo "postgres: could not stop the throwaway server in $SNAPSHOP_PG_TMP" >&2
    fi
    rm -rf "$SNAPSHOP_PG_TMP"
    SNAPSHOP_PG_TMP=""
  fi
  return 0
}
