#!/usr/bin/env bash
# LLaVA-1.5-7B's full shape (random weights: systems only) on one large GPU, bf16 autocast, every
# method side by side; sized to finish within 8 minutes on one 80+ GB GPU (never timed: no GPU has
# been lent yet). Writes benchmarks/bench-...-cuda-bf16.{json,md,png}.
#   bash benchmarks/cuda_llava7b.sh                # from the repository root, dpbench on PATH
# The language model trains through LoRA adapters (r = 16 on q_proj and v_proj) and the projector
# trains whole, as DP fine-tuning of a 7 B model is done in practice: full fine-tuning needs fp32
# Adam state for 6.7 B parameters (80 GB) before DP-SGD's per-example gradients (27 GB each).
# Flags given after the script's name override its own (the last occurrence wins).
set -euo pipefail
exec "${DPBENCH:-dpbench}" bench \
  --model llava-1.5-7b-random \
  --device cuda \
  --precision bf16 \
  --trainable projector,language_model \
  --lora r=16,alpha=32,targets=q_proj,v_proj \
  --methods nonprivate,dpsgd,dpsgd:clipping=ghost,dpzo,dualpriv,dualpriv:clipping=ghost \
  --batch-sizes 8 \
  --steps 3 \
  --rounds 1 \
  --n-train 512 \
  --name bench-scienceqa-llava-1.5-7b-random-cuda-bf16 \
  "$@"
