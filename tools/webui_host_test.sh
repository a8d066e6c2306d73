#!/usr/bin/env bash
# Runs tests/test_webui_host.py against a real AUTOMATIC1111 WebUI v1.10.1 on this machine (CPU,
# offline, random-weight models), installed under $WEBUI_ROOT and started/stopped by the scripts in
# $SHARED_WEBUI (see docs/webui-testing.md for what they must provide). Steps: link this checkout as an extension, run its install.py as the
# launcher would, put a tiny ZeroScope model and a tiny AnimateDiff motion module and
# AnimateLCM folder in models/VideoElevator, a tiny SDXL checkpoint in models/Stable-diffusion
# (tools/make_host_sdxl.py), start the API (with $WEBUI_FLAGS, e.g. --medvram), run the tests,
# stop the server.
#   usage: tools/webui_host_test.sh [pytest args...]     env: WEBUI_ROOT (default /tmp/webui),
#          WEBUI_FLAGS (extra WebUI flags, e.g. "--medvram")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
SHARED=${SHARED_WEBUI:-$REPO/../shared/webui}
ROOT=${WEBUI_ROOT:-/tmp/webui}
APP=$ROOT/stable-diffusion-webui
[ -x "$ROOT/venv/bin/python" ] || { echo "no WebUI at $ROOT: run $SHARED/setup.sh --mirror <folder> first" >&2; exit 2; }
bash tools/setup_env.sh
ln -sfn "$REPO" "$APP/extensions/sd-webui-videoelevator"
(cd "$APP" && PYTHONPATH="$APP" "$ROOT/venv/bin/python" extensions/sd-webui-videoelevator/install.py)
if [ ! -f "$APP/models/VideoElevator/tiny-zeroscope/model_index.json" ]; then
  HF_HUB_OFFLINE=1 .venv/bin/python -c "from lib_elevator.tiny.t2v import build_tiny_zeroscope_folder as b; b('$APP/models/VideoElevator/tiny-zeroscope')"
fi
MM=$APP/models/VideoElevator/tiny-mm_sd_v15_v2.safetensors
if [ ! -f "$MM" ]; then  # an AnimateDiff motion module shaped for the tiny checkpoint's UNet
  HF_HUB_OFFLINE=1 .venv/bin/python -c "
from lib_elevator.loaders import load_t2i
from lib_elevator.tiny.t2v import write_tiny_motion_module
unet = load_t2i('$APP/models/Stable-diffusion/tiny-sd1.safetensors').unet.config
write_tiny_motion_module('$MM', 'v2', block_out_channels=unet.block_out_channels, layers_per_block=unet.layers_per_block)"
fi
LCM=$APP/models/VideoElevator/AnimateLCM
if [ ! -f "$LCM/config.json" ]; then  # an AnimateLCM folder (motion adapter + LCM LoRA) for the same UNet
  HF_HUB_OFFLINE=1 .venv/bin/python -c "
from lib_elevator.loaders import load_t2i
from lib_elevator.tiny.t2v import build_tiny_animatelcm_folder
unet = load_t2i('$APP/models/Stable-diffusion/tiny-sd1.safetensors').unet
build_tiny_animatelcm_folder('$LCM', unet_config=dict(unet.config))"
fi
if [ ! -f "$APP/models/VideoElevator/tiny-videocrafter2/model.ckpt" ]; then  # VideoCrafter2 in its real container
  HF_HUB_OFFLINE=1 .venv/bin/python -c "from lib_elevator.tiny.videocrafter import write_tiny_videocrafter as w; w('$APP/models/VideoElevator/tiny-videocrafter2')"
fi
if [ ! -f "$APP/models/VideoElevator/tiny-lavie/lavie_base.pt" ]; then  # LaVie, 64-wide text as the tiny checkpoint's
  HF_HUB_OFFLINE=1 .venv/bin/python -c "from lib_elevator.tiny.lavie import write_tiny_lavie as w; w('$APP/models/VideoElevator/tiny-lavie', cross_attention_dim=64)"
fi
OPEN_CLIP_CONFIGS=$(ls -d "$ROOT"/venv/lib/python3*/site-packages/open_clip/model_configs | head -1)
if [ ! -f "$APP/models/Stable-diffusion/tiny-sdxl.safetensors" ] || [ ! -f "$OPEN_CLIP_CONFIGS/videoelevator-tiny-G.json" ]; then
  # a tiny SDXL checkpoint + yaml the host loads offline (its OpenCLIP arch is registered in open_clip's configs)
  HF_HUB_OFFLINE=1 .venv/bin/python tools/make_host_sdxl.py --webui "$APP" --open-clip-configs "$OPEN_CLIP_CONFIGS"
fi
WEBUI_ROOT=$ROOT "$SHARED/stop.sh" >/dev/null 2>&1 || true
# WEBUI_FLAGS: extra WebUI flags, e.g. WEBUI_FLAGS=--medvram tools/webui_host_test.sh -k sdxl
# shellcheck disable=SC2086
WEBUI_ROOT=$ROOT "$SHARED/start.sh" --port 7861 -- ${WEBUI_FLAGS:-}
trap 'WEBUI_ROOT=$ROOT "$SHARED/stop.sh" >/dev/null' EXIT
if grep -n "Error running\|Error loading script: videoelevator" "$ROOT/webui.log"; then
  echo "the extension logged errors at start (see $ROOT/webui.log)" >&2; exit 1
fi
VIDEOELEVATOR_WEBUI_URL=http://127.0.0.1:7861 HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/test_webui_host.py -q "$@"
