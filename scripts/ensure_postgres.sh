#!/usr/bin/env bash
# Makes sure PostgreSQL's server programs (initdb, postgres) are on this machine. The tests of the
# load-balanced recipient provider (tests/test_si_pgmailbox.py, tests/test_si_pgbus.py) start a
# throwaway cluster of their own with them (offchain/devnet/postgres.py); `make test` runs this first.
#
# Idempotent: does nothing when the programs are found (in $CONET_PG_BIN, on PATH, or in Debian's
# /usr/lib/postgresql/<version>/bin), or when $CONET_TEST_PG_DSN names a server CI started itself.
# Otherwise installs Debian's `postgresql` package with apt-get (as root, or through `sudo -n`).
set -euo pipefail

say() { echo "ensure_postgres: $*"; }

if [[ -n "${CONET_TEST_PG_DSN:-}" ]]; then
    say "using the server named by CONET_TEST_PG_DSN; nothing to install"
    exit 0
fi

find_initdb() {
    if [[ -n "${CONET_PG_BIN:-}" ]]; then
        [[ -x "$CONET_PG_BIN/initdb" ]] && { echo "$CONET_PG_BIN/initdb"; return 0; }
        return 1
    fi
    command -v initdb 2>/dev/null && return 0
    local found
    found=$(find /usr/lib/postgresql -path '*/bin/initdb' 2>/dev/null | sort -V | tail -n 1 || true)
    [[ -n "$found" ]] && { echo "$found"; return 0; }
    return 1
}

if initdb=$(find_initdb); then
    say "PostgreSQL found: $initdb"
    exit 0
fi
if [[ -n "${CONET_PG_BIN:-}" ]]; then
    echo "ensure_postgres: CONET_PG_BIN is '$CONET_PG_BIN', which has no executable initdb" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_postgres: PostgreSQL's server (initdb, postgres) is not installed and this machine has no" \
         "apt-get: install it with the system's package manager, or set CONET_PG_BIN to its bin directory" >&2
    exit 1
fi
run_root=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        run_root=(sudo -n)
    else
        echo "ensure_postgres: PostgreSQL is not installed, and installing it needs root (or password-less" \
             "sudo): run \`sudo apt-get install postgresql\` once" >&2
        exit 1
    fi
fi

say "installing Debian's postgresql package"
# The tests start their own clusters on free ports: Debian's default cluster on 5432 would only sit
# there using memory, so ask postgresql-common not to create it (the official Docker image does the same;
# a drop-in file, not the package's conffile, so dpkg asks nothing).
"${run_root[@]}" mkdir -p /etc/postgresql-common/createcluster.d
if [[ ! -e /etc/postgresql-common/createcluster.d/conet-no-main-cluster.conf ]]; then
    echo "create_main_cluster = false" | "${run_root[@]}" tee /etc/postgresql-common/createcluster.d/conet-no-main-cluster.conf >/dev/null
fi
export DEBIAN_FRONTEND=noninteractive
# A fresh machine's package lists may be missing or stale, and `install` alone then fails.
"${run_root[@]}" apt-get update -qq
"${run_root[@]}" apt-get install -y -qq --no-install-recommends postgresql >/dev/null

if initdb=$(find_initdb); then
    say "PostgreSQL installed: $initdb"
else
    echo "ensure_postgres: apt-get installed postgresql, yet no initdb was found under /usr/lib/postgresql" >&2
    exit 1
fi
