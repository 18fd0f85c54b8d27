#!/usr/bin/env bash
# Load benchmark against nginx and Varnish on this machine: builds release binaries, then runs
# benches/load.py. Needs wrk, nginx and varnish (Debian: apt-get install -y wrk nginx varnish).
# RUNS=5 DURATION=5s by default; LOGGING=on for every proxy's default request log; URLS=2000,20000,100000.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null && command -v nginx >/dev/null && command -v varnishd >/dev/null || {
    echo "installing wrk, nginx and varnish" >&2
    apt-get install -y wrk nginx varnish >/dev/null
}
cargo build --release --bin outpost --example fill_store --example floor
exec python3 benches/load.py "$@"
