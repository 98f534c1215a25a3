#!/usr/bin/env bash
# The main job end to end on the built-in generated sample: train a teacher,
# distil a student, denoise, print PSNR/SSIM. Extra arguments go to `atbsn demo`.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh" demo ""
exec "$VENV/bin/atbsn" demo "$@"
