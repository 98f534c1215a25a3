#!/usr/bin/env bash
# Each install set of the README on its own, in a fresh virtual environment: the core alone (no Qt, no
# napari), the [export] extra alone, the [napari] extra alone, the [cluster] extra alone. The [dev] union the tests run in can hide a
# missing or conflicting dependency of one extra (pydantic 2.14 broke bioimageio exports that way). Each
# environment gets the pinned CPU torch first, then the package, then a smoke test of what the set is for.
#   bash scripts/check_extras.sh            # all four (a few minutes: each set is downloaded and installed)
#   bash scripts/check_extras.sh export     # one of: core export napari cluster
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

venv() {  # venv NAME EXTRA -> path of its python
  "$PY" -m venv "$WORK/$1"
  "$WORK/$1/bin/python" -m pip install -q "$TORCH_SPEC" 2> >(grep -v "is ignored: it is neither" >&2)
  "$WORK/$1/bin/python" -m pip install -q "$ROOT$2" 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$WORK/$1/bin/python"
}

check_core() {
  local py; py="$(venv core "")"
  echo "[extras] core alone: no Qt binding, no napari; the demo end to end"
  "$py" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('napari', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6')))"
  (cd "$WORK" && "$WORK/core/bin/atbsn" demo -o "$WORK/demo" --preset tiny --device cpu | tail -4)
}

check_export() {
  local py; py="$(venv export "[export]")"
  echo "[extras] [export] alone: a student as ONNX and as a validated BioImage Model Zoo package"
  (cd "$WORK" && "$WORK/export/bin/atbsn" demo -o "$WORK/ex" --preset tiny --device cpu >/dev/null)
  "$WORK/export/bin/atbsn" export "$WORK/ex/student" --format onnx -o "$WORK/s.onnx"
  "$WORK/export/bin/atbsn" export "$WORK/ex/student" --format bioimageio -o "$WORK/s.zip" --author CI
  "$py" -c "import pydantic; print('[extras] pydantic', pydantic.VERSION)"
}

check_napari() {
  local py; py="$(venv napari "[napari]")"
  echo "[extras] [napari] alone: the plugin's manifest and its widgets in a viewer"
  local run=("$py"); command -v xvfb-run >/dev/null 2>&1 && run=(xvfb-run -a "$py")
  cat > "$WORK/widgets.py" <<'EOF'
import napari
from napari_atbsn._widgets import CompareWidget, DenoiseWidget, DistillWidget, NoiseWidget, TrainWidget

viewer = napari.Viewer(show=False)
for cls in (TrainWidget, DistillWidget, DenoiseWidget, CompareWidget, NoiseWidget):
    viewer.window.add_dock_widget(cls(viewer), name=cls.__name__)
print("[extras] napari", napari.__version__, "- five widgets docked")
viewer.close()
EOF
  "${run[@]}" "$WORK/widgets.py"
}

check_cluster() {
  local py; py="$(venv cluster "[cluster]")"
  echo "[extras] [cluster] alone: a denoise on a dask.distributed cluster (a local one, worker processes)"
  (cd "$WORK" && "$WORK/cluster/bin/atbsn" demo -o "$WORK/cl" --preset tiny --device cpu >/dev/null)
  cat > "$WORK/cluster.py" <<'EOF'
import sys

import numpy as np
from distributed import LocalCluster

from napari_atbsn.inference.run import denoise
from napari_atbsn.io.readers import open_image

work = sys.argv[1]
if __name__ == "__main__":
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        denoise(f"{work}/cl/noisy.tif", f"{work}/cl/student", f"{work}/c.ome.zarr", chunk=64, device="cpu",
                scheduler=cluster.scheduler_address)
    denoise(f"{work}/cl/noisy.tif", f"{work}/cl/student", f"{work}/s.ome.zarr", chunk=64, device="cpu")
    a, b = (np.asarray(open_image(f"{work}/{n}.ome.zarr").data) for n in "cs")
    assert a.shape == b.shape and np.allclose(a, b, atol=1e-3), float(np.abs(a - b).max())
    print("[extras] the cluster's denoise equals the in-process one")
EOF
  "$py" "$WORK/cluster.py" "$WORK"
}

for set in ${@:-core export napari cluster}; do
  "check_$set"
done
echo "[extras] ok: ${*:-core export napari cluster}"
