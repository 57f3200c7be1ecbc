#!/usr/bin/env bash
# The main job: installs what is missing, builds, and runs djinn on the bundled tiny
# models (the golden Hugging Face fixtures in tests/golden), printing a readable report.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install_deps.sh
./scripts/build.sh
djinn="${DJINN_BUILD_DIR:-build}/src/djinn"
for model in llama-tiny gpt2-tiny; do
  prompt=$(grep -A16 '"generated_ids"' "tests/golden/$model/expected.json" | tail -n 16 | tr -d ' \n')
  "$djinn" run --model "tests/golden/$model" --prompt-ids "${prompt%,}" --max-new-tokens 24
  echo
done
"$djinn" run --model gpt2 --prompt-len 32 --max-new-tokens 16
