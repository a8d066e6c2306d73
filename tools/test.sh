#!/usr/bin/env bash
# Install (once) and run the test suite. pytest exits non-zero when a test fails and also when no
# test ran at all (exit code 5), so a run that tests nothing never passes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
.venv/bin/ruff check lib_elevator scripts tests bench install.py preload.py
exec .venv/bin/python -m pytest -q "$@"
