"""`numoe synth`: write a random-weight GGUF model at a named shape preset."""

from __future__ import annotations

import sys
import time

from .common import HELP_FMT, positive_int


def add_parser(sub) -> None:
    from ..gguf.write import WRITE_TYPES
    from ..synth import DEFAULT_PRESET, presets

    p = sub.add_parser(
        "synth",
        help="write a random-weight model at real shapes",
        description="Write a random-weight GGUF model with a working tokenizer. Presets: "
        + ", ".join(presets()),
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
    from ..synth import synth

    t0 = time.perf_counter()
    cfg = synth(args.preset, args.output, args.qtype, args.layers, args.seed)
    print(
        f"numoe: wrote {args.output}: {cfg.arch} preset {args.preset}, {cfg.n_layer} layers, "
        f"{args.qtype}, in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    return 0
