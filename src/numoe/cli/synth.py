"""`numoe synth`: write a random-weight GGUF model at a named shape preset."""

from __future__ import annotations

import sys
import time

from .common import HELP_FMT
from .flags import positive_int

# numoe.synth.presets() and numoe.gguf.write.WRITE_TYPES, named here so that `numoe --help`
# need not import them (they import torch); a test checks that they agree.
DEFAULT_PRESET = "tiny-qwen3moe"
PRESETS = (
    "tiny-v2", "tiny-v3", "deepseek-v2-lite", "deepseek-v3", "tiny-mixtral", "mixtral-8x7b",
    "mixtral-8x22b", "tiny-qwen3moe", "tiny-qwen2moe", "small-qwen3moe", "qwen3-30b-a3b",
    "qwen1.5-moe-a2.7b",
)  # fmt: skip
WRITE_TYPES = (
    "F32", "F16", "BF16", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
    "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0",
)  # fmt: skip


def add_parser(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="write a random-weight model at real shapes",
        description="Write a random-weight GGUF model with a working tokenizer, with progress "
        "on stderr. Presets: " + ", ".join(PRESETS),
        formatter_class=HELP_FMT,
    )
    p.add_argument("-o", "--output", required=True, help="GGUF file to write")
    p.add_argument("--preset", default=DEFAULT_PRESET, help="shape preset")
    p.add_argument(
        "--type", dest="qtype", default="Q8_0", type=str.upper, choices=list(WRITE_TYPES),
        help="tensor type (quantized types: llama.cpp's per-tensor mix, as numoe quantize)",
    )  # fmt: skip
    p.add_argument(
        "--layers",
        type=positive_int,
        default=None,
        help="override the layer count (default: the preset's)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=main)


def main(args) -> int:
    from pathlib import Path

    from ..files import check_output_dir

    check_output_dir(Path(args.output))  # before the imports and the vocabulary
    from ..progress import WriteProgress, size
    from ..synth import synth

    prog = WriteProgress(Path(args.output).name)
    try:
        cfg = synth(args.preset, args.output, args.qtype, args.layers, args.seed, prog)
    finally:
        prog.clear()
    print(
        f"numoe: wrote {args.output} ({size(Path(args.output).stat().st_size)}): {cfg.arch} "
        f"preset {args.preset}, {cfg.n_layer} layers, {args.qtype}, in "
        f"{time.perf_counter() - prog.t0:.1f} s",
        file=sys.stderr,
    )
    return 0
