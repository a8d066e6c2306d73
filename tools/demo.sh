#!/usr/bin/env bash
# Install (once) and run the standalone demo: tiny random-weight models built on the spot, the whole
# VideoElevator path, a video in outputs/demo/. Extra arguments go to `python -m lib_elevator generate`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/python -m lib_elevator generate --demo --out outputs/demo/videoelevator-demo.mp4 --formats mp4,gif,png "$@"
