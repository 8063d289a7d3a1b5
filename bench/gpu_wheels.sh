#!/usr/bin/env bash
# Prepare the wheels that bench/gpu.sh installs on the lent GPU machine (run HERE, on a machine that
# reaches PyPI; the GPU machine reaches nothing).
#
#   bash bench/gpu_wheels.sh          # → .whl/*.whl (ignored by git through .git/info/exclude)
#
# The GPU machine's image (/work/.library/device/KINDS.md, "Python packages already there") has torch
# 2.11, transformers, tokenizers, sentencepiece, safetensors, accelerate, pyyaml, psutil, numpy, rich,
# tqdm, pyarrow, fsspec, msgpack, ninja, py-cpuinfo, einops, packaging, matplotlib, but not what
# `python -m zerolm.pretrain` imports beyond those:
#   deepspeed (pretrain/engine.py) + hjson (deepspeed's config reader); pydantic + pydantic-core +
#   annotated-types + typing-inspection (zerolm/config.py, and deepspeed's config classes), with the
#   typing-extensions pydantic 2.14 asks for (>= 4.16); omegaconf (zerolm/config.py's dotlist overrides;
#   2.4 vendors its antlr4 runtime, so antlr4-python3-runtime is not needed).
# Versions: those of this repository's .venv (requirements/constraints.txt). Lazily imported packages
# the benchmark never reaches (wandb: tracking.wandb_mode=disabled; codecarbon: emissions disabled;
# datasets: no hf_dataset source; zstandard: no .zst input) are left out.
# deepspeed ships only an sdist on PyPI: it is built here into a pure-python wheel with no ops
# (DS_BUILD_OPS=0; zerolm trains with torch's fused AdamW, so no DeepSpeed op is ever JIT-built).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=.whl

# the pins: read from requirements/constraints.txt so this script follows the project's versions
pin() {  # NAME -> NAME==VERSION from the constraints file (case- and -/_-insensitive)
  local want got
  want=$(echo "$1" | tr 'A-Z_' 'a-z-')
  got=$(tr 'A-Z_' 'a-z-' <requirements/constraints.txt | grep -E "^${want}==" | head -1 || true)
  [ -n "$got" ] || { echo "no pin for $1 in requirements/constraints.txt" >&2; exit 1; }
  echo "$got"
}

mkdir -p "$DEST"
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
rm -f "$DEST"/*.whl

# binary wheels for the GPU machine's CPython 3.12 on x86-64 (flags: /work/.library/device/README.md)
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
BINARY=(hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions omegaconf)
PINS=()
for p in "${BINARY[@]}"; do PINS+=("$(pin "$p")"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLAT[@]}" -d "$DEST" "${PINS[@]}"

# deepspeed: sdist → pure-python wheel, built with this venv's torch (no build isolation), no ops
DS=$(pin deepspeed)
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
DS_BUILD_OPS=0 DS_ACCELERATOR=cpu "$PY" -m pip wheel -q --no-cache-dir --no-deps --no-build-isolation --no-binary deepspeed \
  -w "$BUILD" "$DS"
cp "$BUILD"/deepspeed-*.whl "$DEST"/

# checks: one wheel per package, each for py3 or cp312 on manylinux x86-64, and what they still need
echo "wheels in $DEST:"
ls -l "$DEST"/*.whl | awk '{printf "  %8.1f KiB  %s\n", $5/1024, $NF}'
for w in "$DEST"/*.whl; do
  case "$(basename "$w")" in
    *-py3-none-any.whl|*-py2.py3-none-any.whl|*-cp312-cp312-manylinux*x86_64*.whl) ;;
    *) echo "unexpected wheel tag: $w" >&2; exit 1 ;;
  esac
done
n_files=$(ls "$DEST"/*.whl | wc -l)
n_names=$(ls "$DEST"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z' 'a-z' | sort -u | wc -l)
[ "$n_files" = "$n_names" ] || { echo "two versions of one package in $DEST" >&2; exit 1; }
echo "their requirements (the GPU machine must have the rest):"
for w in "$DEST"/*.whl; do
  unzip -p "$w" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' | sed "s|^|  $(basename "$w" | cut -d- -f1): |" || true
done
size=$(du -sk "$DEST" | cut -f1)
echo "total: $((size / 1024)).$(( (size % 1024) * 10 / 1024 )) MiB in $n_files wheels"
[ "$size" -lt $((40 * 1024)) ] || { echo "over the 40 MiB budget" >&2; exit 1; }
