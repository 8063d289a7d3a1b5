#!/usr/bin/env bash
# zerolm's trainer on one lent GPU (issue 18, "On a GPU"): tokens/s, MFU against the dense bf16 peak, and
# peak CUDA memory for GPT-3 125M and 350M (configs/models/), bf16, ZeRO-2 and ZeRO-1 on one GPU, with
# train.compile off and on, 200 steps each at seq_len 1024 × micro-batch 16, on the bundled corpus.
# bench/gpu_bench.py is the driver; this script prepares the machine for it.
#
# Prepare, here (on the CPU machine, which reaches PyPI), once:
#   bash bench/gpu_wheels.sh     # → .whl/: deepspeed (built, no ops), pydantic(+core), omegaconf, hjson, …
#   (data/corpus and data/tokenizer must exist: `zerolm data prepare`, `zerolm tokenizer train`)
# Then the one device call (the `run` tool):
#   command:   bash bench/gpu.sh
#   carry:     ["data/corpus", "data/tokenizer", ".whl"]
#   timeout_s: 540
# The driver's own budget is --max-minutes 7 (420 s): runs that would overrun it are skipped and listed;
# wheel install, start-up and nvidia-smi take the rest. Extra arguments go to the driver, e.g.
#   bash bench/gpu.sh --presets gpt3-125m --steps 100
# What comes back under $OUT: gpu.log (everything printed), gpu_bench.json, gpu_bench.md (the table).
#
# Anchor: llm-foundry's MPT-125M reaches 44.8 % MFU on A100s (amp_bf16, seq 2048, 8× A100-80GB, FSDP;
# mosaicml/llm-foundry scripts/train/benchmarking/README.md).
#
# Also: `bash bench/gpu.sh --layout DIR` only lays the repository out under DIR as an importable `zerolm`
# package (symbolic links; what pyproject.toml's package-dir maps) and exits.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

layout() {  # DIR: DIR/zerolm → zerolm/'s files + pretrain/, finetune/, evals/, launch/, data_pipeline/, configs/
  local dest=$1/zerolm
  rm -rf "$dest" && mkdir -p "$dest" || return 1
  for f in "$REPO"/zerolm/*; do ln -s "$f" "$dest/$(basename "$f")"; done
  for d in pretrain finetune evals launch data_pipeline configs; do ln -s "$REPO/$d" "$dest/$d"; done
}

if [ "${1:-}" = "--layout" ]; then
  layout "${2:?--layout DIR}"
  exit $?
fi

OUT=${OUT:-$REPO/bench/results/gpu}
mkdir -p "$OUT"

main() {
  echo "== $(date -u +%FT%TZ) zerolm GPU bench; repo $REPO; out $OUT"
  nvidia-smi || echo "nvidia-smi failed"
  local py=python3
  if compgen -G ".whl/*.whl" >/dev/null; then
    echo "== installing the carried wheels into /tmp/site"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "wheel install failed"; return 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "== no .whl/*.whl (run bash bench/gpu_wheels.sh here and carry .whl): using what is installed"
  fi
  # zerolm without pip: its package-dir mapping as symbolic links (runs start outside the repository)
  layout /tmp/zerolm_path || { echo "layout failed"; return 1; }
  export PYTHONPATH=/tmp/zerolm_path${PYTHONPATH:+:$PYTHONPATH}
  # (the driver sets DS_ACCELERATOR for the runs: zerolm's CLI would otherwise default it to cpu)
  export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  echo "== versions and imports"
  (cd /tmp && "$py" - <<'EOF'
import importlib.metadata as md, os, sys
import torch
os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for n in ("deepspeed", "transformers", "tokenizers", "pydantic", "pydantic_core", "omegaconf", "triton", "accelerate"):
    try:
        print(f"  {n} {md.version(n)}")
    except md.PackageNotFoundError:
        print(f"  {n} ABSENT")
import deepspeed, zerolm.pretrain.engine, zerolm.pretrain.trainer  # noqa: F401  the training path imports
print("  deepspeed accelerator:", deepspeed.get_accelerator()._name, "| zerolm from", zerolm.pretrain.engine.__file__)
EOF
  ) || { echo "the training path does not import; see above"; return 1; }
  echo "== driver"
  "$py" bench/gpu_bench.py --out "$OUT" "$@"
}

main "$@" 2>&1 | tee "$OUT/gpu.log"
