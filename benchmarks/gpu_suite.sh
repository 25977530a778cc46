#!/usr/bin/env bash
# Every GPU figure of docs/performance.md (Benchmarks), in one run on one GPU (sized for 8 minutes on
# a recent data-centre GPU), written to one Markdown file named after the device:
#
#     benchmarks/gpu_suite.sh [results.md]
#
# GPU_SUITE_DRY=1 runs nothing: it checks that every command parses its arguments (the tests do
# this on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."

COMMANDS=(
  # ResNet-50 at 224 px, official expander: fp32, bf16, + channels_last, + torch.compile.
  "benchmarks/bench_step.py --device cuda --backbone resnet50 --size 224 --expander 8192-8192-8192 --batch 128 --steps 6"
  # ViT-S/16 (timm) at 224 px, the imagenet_vit_small expander.
  "benchmarks/bench_step.py --device cuda --backbone timm:vit_small_patch16_224 --size 224 --expander 8192-8192-8192 --batch 128 --steps 6"
  # Micro-batching: a batch of 256 in micro-batches of 64 against one pass (time and peak memory).
  "benchmarks/bench_step.py --device cuda --backbone resnet50 --size 224 --expander 8192-8192-8192 --batch 256 --micro-batch-size 64 --steps 4 --rounds 1"
  "benchmarks/bench_step.py --device cuda --backbone timm:vit_small_patch16_224 --size 224 --expander 8192-8192-8192 --batch 256 --micro-batch-size 64 --steps 4 --rounds 1"
  # The data pipeline, with the augmentation on the device.
  "benchmarks/bench_data.py --device cuda"
  # The loss against the official D×D formulation.
  "benchmarks/bench_loss.py --device cuda"
)

if [[ -n "${GPU_SUITE_DRY:-}" ]]; then
  exec python benchmarks/parse_commands.py "${COMMANDS[@]}"
fi

device=$(python -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else '')")
if [[ -z "$device" ]]; then
  echo "benchmarks/gpu_suite.sh: no CUDA device; GPU_SUITE_DRY=1 checks the commands without one" >&2
  exit 2
fi
out=${1:-benchmarks/gpu_suite_$(echo "$device" | tr -c 'A-Za-z0-9\n' '_').md}
{
  echo "# GPU suite: $device"
  echo
  echo "torch $(python -c 'import torch; print(torch.__version__)'), $(date -u +%Y-%m-%d)."
} > "$out"
for command in "${COMMANDS[@]}"; do
  echo "running: python $command" >&2
  { echo; echo "## \`python $command\`"; echo; python $command; } >> "$out"
done
echo "wrote $out" >&2
