#!/usr/bin/env bash
# The environment for benchmarks/compare.py: napari-atbsn with its `bench` extra
# (CAREamics for Noise2Void/structN2V, bm3d, matplotlib) in its own .venv-bench.
#
# Why a second venv: careamics 0.3.5 caps torchvision at 0.26, which needs
# torch 2.11 and exists only as a CUDA build (there is no CPU torchvision wheel),
# so pip brings torch 2.11 with its CUDA libraries (~3 GB). That is what a
# CAREamics user has; it runs on a CPU-only machine too. Keeping it out of
# .venv leaves the dev/test environment on the pinned CPU torch. Every method
# in compare.py runs in this one environment, so all share the same torch.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv-bench"
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
if ! "$VENV/bin/python" -c "import careamics, bm3d, matplotlib, napari_atbsn" 2>/dev/null \
    || [ pyproject.toml -nt "$VENV/.installed" ]; then
  echo "[bench] installing napari-atbsn[bench] into .venv-bench (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q -e ".[bench]" 2> >(grep -v "is ignored: it is neither" >&2)
  touch "$VENV/.installed"
fi
"$VENV/bin/python" -c "import torch, careamics, bm3d; print('[bench] torch', torch.__version__, '| careamics', careamics.__version__, '| bm3d ok')"
