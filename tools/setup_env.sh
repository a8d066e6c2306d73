#!/usr/bin/env bash
# Creates .venv (once) with the pinned environment of requirements-dev.txt: the same versions as the
# AUTOMATIC1111 v1.10.1 WebUI venv, so what works here works inside the WebUI. Idempotent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
STAMP=.venv/.requirements-dev.sha
want=$(sha1sum requirements-dev.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements-dev.txt (a few minutes the first time)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
  # open_clip_torch only for its CLIP BPE vocabulary file (as in the WebUI venv); its torchvision
  # dependency would pull a CUDA build, so it is installed without dependencies.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps open_clip_torch==2.20.0
  echo "$want" > "$STAMP"
fi
