#!/usr/bin/env bash
# Installs what is missing, builds with warnings as errors, and runs the whole test
# suite. The last thing printed is CTest's summary.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install_deps.sh
./scripts/build.sh
cd "${DJINN_BUILD_DIR:-build}"
ctest --output-on-failure -j"$(nproc)" --timeout 600
