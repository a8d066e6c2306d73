#!/usr/bin/env bash
# Runs tests/test_webui_host.py against a real WebUI on this machine (CPU, offline, random-weight
# models): AUTOMATIC1111 v1.10.1 (default) or Forge (HOST=forge), installed under $WEBUI_ROOT and
# started/stopped by the scripts in $SHARED_WEBUI (see docs/webui-testing.md for what they must
# provide). Steps: link this checkout as an extension, run its install.py as the launcher would, put
# small T2V models in models/VideoElevator (ZeroScope, an AnimateDiff motion module and an AnimateLCM
# folder shaped for the host's checkpoint, VideoCrafter2, LaVie), for A1111 a tiny SDXL checkpoint
# in models/Stable-diffusion (tools/make_host_sdxl.py), start the API (with $WEBUI_FLAGS, e.g.
# --medvram), run the tests, stop the server.
#   usage: tools/webui_host_test.sh [pytest args...]
#   env:   HOST (a1111 | forge; default a1111), WEBUI_ROOT (default /tmp/webui, /tmp/forge for Forge),
#          SHARED_WEBUI (default ../shared/webui or ../shared/forge), WEBUI_FLAGS (extra host flags)
# Forge only accepts full-size SD checkpoints (its loader recognises SD1.5 by its real shapes), so
# there the checkpoint is a random full-size SD1.5, the motion modules are full-width too, and a step
# takes seconds: the suite runs with fewer steps (VIDEOELEVATOR_HOST_STEPS) and takes about an hour.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
HOST=${HOST:-a1111}
case "$HOST" in
  a1111) SHARED=${SHARED_WEBUI:-$REPO/../shared/webui}; ROOT=${WEBUI_ROOT:-/tmp/webui}
         APP=$ROOT/stable-diffusion-webui; PORT=7861; LOG=$ROOT/webui.log
         CKPT=$APP/models/Stable-diffusion/tiny-sd1.safetensors; export VIDEOELEVATOR_HOST_STEPS=${VIDEOELEVATOR_HOST_STEPS:-12} ;;
  forge) SHARED=${SHARED_WEBUI:-$REPO/../shared/forge}; ROOT=${WEBUI_ROOT:-/tmp/forge}
         APP=$ROOT/stable-diffusion-webui-forge; PORT=7881; LOG=$ROOT/forge.log
         CKPT=$APP/models/Stable-diffusion/sd15-random-fp16.safetensors; export VIDEOELEVATOR_HOST_STEPS=${VIDEOELEVATOR_HOST_STEPS:-4} ;;
  *) echo "HOST must be a1111 or forge" >&2; exit 2 ;;
esac
[ -x "$ROOT/venv/bin/python" ] || { echo "no $HOST WebUI at $ROOT: run $SHARED/setup.sh --mirror <folder> first" >&2; exit 2; }
bash tools/setup_env.sh
ln -sfn "$REPO" "$APP/extensions/sd-webui-videoelevator"
(cd "$APP" && PYTHONPATH="$APP" "$ROOT/venv/bin/python" extensions/sd-webui-videoelevator/install.py)
MODELS=$APP/models/VideoElevator
PY() { HF_HUB_OFFLINE=1 .venv/bin/python -c "$1"; }
[ -f "$MODELS/tiny-zeroscope/model_index.json" ] || \
  PY "from lib_elevator.tiny.t2v import build_tiny_zeroscope_folder as b; b('$MODELS/tiny-zeroscope')"
MM=$MODELS/tiny-mm_sd_v15_v2.safetensors
[ -f "$MM" ] || PY "  # an AnimateDiff motion module shaped for the host checkpoint's UNet
from lib_elevator.loaders import load_t2i
from lib_elevator.tiny.t2v import write_tiny_motion_module
unet = load_t2i('$CKPT').unet.config
write_tiny_motion_module('$MM', 'v2', block_out_channels=unet.block_out_channels, layers_per_block=unet.layers_per_block)"
[ -f "$MODELS/AnimateLCM/config.json" ] || PY "  # an AnimateLCM folder (motion adapter + LCM LoRA) for the same UNet
from lib_elevator.loaders import load_t2i
from lib_elevator.tiny.t2v import build_tiny_animatelcm_folder
build_tiny_animatelcm_folder('$MODELS/AnimateLCM', unet_config=dict(load_t2i('$CKPT').unet.config))"
[ -f "$MODELS/tiny-videocrafter2/model.ckpt" ] || \
  PY "from lib_elevator.tiny.videocrafter import write_tiny_videocrafter as w; w('$MODELS/tiny-videocrafter2')"
[ -f "$MODELS/tiny-lavie/lavie_base.pt" ] || PY "  # LaVie, with the text width of the host's checkpoint
from lib_elevator.loaders import load_t2i
from lib_elevator.tiny.lavie import write_tiny_lavie
write_tiny_lavie('$MODELS/tiny-lavie', cross_attention_dim=load_t2i('$CKPT').unet.config.cross_attention_dim)"
if [ "$HOST" = a1111 ]; then
  OPEN_CLIP_CONFIGS=$(ls -d "$ROOT"/venv/lib/python3*/site-packages/open_clip/model_configs | head -1)
  if [ ! -f "$APP/models/Stable-diffusion/tiny-sdxl.safetensors" ] || [ ! -f "$OPEN_CLIP_CONFIGS/videoelevator-tiny-G.json" ]; then
    # a tiny SDXL checkpoint + yaml the host loads offline (its OpenCLIP arch is registered in open_clip's configs)
    HF_HUB_OFFLINE=1 .venv/bin/python tools/make_host_sdxl.py --webui "$APP" --open-clip-configs "$OPEN_CLIP_CONFIGS"
  fi
fi
STOP() { if [ "$HOST" = forge ]; then "$SHARED/stop.sh" --root "$ROOT"; else WEBUI_ROOT=$ROOT "$SHARED/stop.sh"; fi; }
STOP >/dev/null 2>&1 || true
# shellcheck disable=SC2086
if [ "$HOST" = forge ]; then
  "$SHARED/start.sh" --root "$ROOT" --port $PORT -- ${WEBUI_FLAGS:-}
else
  WEBUI_ROOT=$ROOT "$SHARED/start.sh" --port $PORT -- ${WEBUI_FLAGS:-}
fi
trap 'STOP >/dev/null' EXIT
if grep -n "Error running\|Error loading script: videoelevator" "$LOG"; then
  echo "the extension logged errors at start (see $LOG)" >&2; exit 1
fi
VIDEOELEVATOR_WEBUI_URL=http://127.0.0.1:$PORT HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/test_webui_host.py -q "$@"
