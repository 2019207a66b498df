#!/usr/bin/env bash
# Make sure the PostgreSQL server binaries (initdb, pg_ctl, postgres, psql) are installed, for
# `infra/stack.sh up --db postgres` and its tests. Idempotent: does nothing when
# /usr/lib/postgresql/*/bin/initdb (or $SKINFLOW_PG_BIN/initdb) exists; else installs Debian's
# `postgresql` package with apt-get (through sudo when not root). The package's own system
# service is not used: the stack runs its own server in its own data directory.
set -euo pipefail

found() {
  if [[ -n "${SKINFLOW_PG_BIN:-}" ]]; then [[ -x "$SKINFLOW_PG_BIN/initdb" ]]; return; fi
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

if found; then exit 0; fi
command -v apt-get >/dev/null || { echo "PostgreSQL server binaries missing and no apt-get: install PostgreSQL >= 15 and set SKINFLOW_PG_BIN" >&2; exit 1; }
SUDO=()
if ((EUID != 0)); then
  command -v sudo >/dev/null || { echo "PostgreSQL server binaries missing: run 'apt-get install postgresql' as root" >&2; exit 1; }
  SUDO=(sudo)
fi
echo "[postgres] installing Debian's postgresql package (server binaries for infra/stack.sh --db postgres)" >&2
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2 ||
  { "${SUDO[@]}" apt-get update -q >&2 && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2; }
found || { echo "postgresql installed but no /usr/lib/postgresql/*/bin/initdb" >&2; exit 1; }
