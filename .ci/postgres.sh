#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster on 127.0.0.1 as an unprivileged user and print
# the URL the tests use (CONCEPTLIB_TEST_POSTGRES_URL). Installs the distribution's
# packages first when no server binaries are present.
#   usage: eval "$(bash .ci/postgres.sh start)"   |   bash .ci/postgres.sh stop DIR
set -euo pipefail

find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  return 1
}

as_user() {
  local user=$1; shift
  if [ "$(id -un)" = "$user" ]; then "$@"; return; fi
  if command -v runuser >/dev/null 2>&1; then runuser -u "$user" -- "$@"; else su "$user" -s /bin/sh -c "$(printf '%q ' "$@")"; fi
}

case "${1:-start}" in
start)
  if ! BIN=$(find_bin); then
    if [ "$(id -u)" -ne 0 ]; then echo "echo 'postgres not installed and not root: skipping' >&2"; exit 0; fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq postgresql >/dev/null
    BIN=$(find_bin)
  fi
  USER_NAME=postgres
  if [ "$(id -u)" -ne 0 ]; then USER_NAME=$(id -un); fi
  if ! id "$USER_NAME" >/dev/null 2>&1; then useradd --system --no-create-home "$USER_NAME"; fi
  DIR=$(mktemp -d /tmp/conceptlib-pg.XXXXXX)
  chown "$USER_NAME" "$DIR"
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
  as_user "$USER_NAME" "$BIN/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  as_user "$USER_NAME" "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c max_connections=200 -c fsync=off" start >/dev/null
  echo "export CONCEPTLIB_TEST_POSTGRES_URL='postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres'"
  echo "export CONCEPTLIB_TEST_POSTGRES_DIR='$DIR'"
  ;;
stop)
  DIR=${2:?data dir}
  BIN=$(find_bin)
  OWNER=$(stat -c %U "$DIR")
  as_user "$OWNER" "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$DIR"
  ;;
esac
