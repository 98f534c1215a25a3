# Shared set-up for scripts/demo.sh and scripts/test.sh (sourced, not run).
# Creates or reuses .venv, installs PyTorch only when none is importable
# (the pinned CPU wheel; a CUDA torch the user already has is kept), then the
# package itself. Override the interpreter with PYTHON=..., the torch
# requirement with TORCH_SPEC=....
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
VENV="$ROOT/.venv"

if [ ! -x "$VENV/bin/python" ]; then
  # A torch with CUDA in the base interpreter is the user's own: let the venv see it.
  if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "[setup] using the CUDA-enabled torch of $PY (venv with system site-packages)"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
if ! "$VPY" -c "import torch" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC (CPU build) into .venv"
  "$VPY" -m pip install -q "$TORCH_SPEC" 2> >(grep -v "is ignored: it is neither" >&2)
fi
# Install the package when missing or when its metadata is older than pyproject.toml.
STAMP="$VENV/.atbsn-installed-$1"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || ! "$VPY" -c "import napari_atbsn" 2>/dev/null; then
  echo "[setup] installing napari-atbsn${2:-} into .venv"
  "$VPY" -m pip install -q -e ".${2:-}" 2> >(grep -v "is ignored: it is neither" >&2)
  touch "$STAMP"
fi
