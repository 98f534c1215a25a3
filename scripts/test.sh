#!/usr/bin/env bash
# The full test suite (plus ruff and the import contract). Installs what it needs:
# .venv, CPU torch when no torch is present, dev tools, and Xvfb with the GL/Qt
# libraries napari's canvas needs (via apt-get, as root or with sudo).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh" test "[dev]"

XLIBS="xvfb xauth libgl1 libegl1 libgl1-mesa-dri libxkbcommon-x11-0 libxcb-cursor0 libdbus-1-3 libfontconfig1
  libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0
  libxcb-xfixes0 libxcb-xkb1"
if ! command -v xvfb-run >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    echo "[setup] installing Xvfb and GL/Qt libraries"
    $SUDO apt-get update -qq >/dev/null && \
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $XLIBS >/dev/null || \
      echo "[setup] warning: could not install Xvfb; GUI tests will be skipped"
  fi
fi

echo "[test] ruff"
"$VENV/bin/ruff" check src tests benchmarks
echo "[test] import contracts: layers (imports point down), no cycles, a Qt-free core"
(cd "$ROOT" && "$VENV/bin/lint-imports" --no-cache)
echo "[test] pytest"
# One pytest worker per core, up to 4, each test file on one worker (its module fixtures are trained once); the
# suite is mostly single-threaded Python, so two workers on two cores take about half the time. Pass -n to
# choose, or ATBSN_TEST_WORKERS=1 to run in one process.
WORKERS="${ATBSN_TEST_WORKERS:-$(nproc 2>/dev/null || echo 1)}"
[ "$WORKERS" -gt 4 ] && WORKERS=4
XDIST=()
if [ "$WORKERS" -gt 1 ] && [[ " $* " != *" -n "* ]] && "$VENV/bin/python" -c "import xdist" 2>/dev/null; then
  XDIST=(-n "$WORKERS" --dist loadfile)
fi
if command -v xvfb-run >/dev/null 2>&1; then
  exec xvfb-run -a "$VENV/bin/python" -m pytest "${XDIST[@]}" "$@"
else
  exec "$VENV/bin/python" -m pytest "${XDIST[@]}" "$@"
fi
