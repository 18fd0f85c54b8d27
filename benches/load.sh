#!/usr/bin/env bash
# Load benchmark against nginx on this machine: builds release binaries, then runs benches/load.py.
# Needs wrk and nginx (Debian: apt-get install -y wrk nginx). RUNS=5 DURATION=5s by default.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null && command -v nginx >/dev/null || {
    echo "installing wrk and nginx" >&2
    apt-get install -y wrk nginx >/dev/null
}
cargo build --release --bin outpost --example fill_store
exec python3 benches/load.py "$@"
