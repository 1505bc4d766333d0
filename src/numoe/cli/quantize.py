"""`numoe quantize`: re-quantize a GGUF file to one of llama.cpp's file types (gguf.mix.FTYPES)."""

from __future__ import annotations

from .common import HELP_FMT

# numoe.gguf.mix.FTYPES, named here so that `numoe --help` need not import it (it imports
# torch); a test checks that they agree.
FTYPES = (
    "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_S", "Q4_K_M",
    "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0",
)  # fmt: skip


def add_parser(sub) -> None:
    p = sub.add_parser(
        "quantize",
        help="re-quantize a GGUF file (llama.cpp's K-quant mixes)",
        description="Re-quantize a GGUF model (F32/F16/BF16 or already quantized) to a llama.cpp "
        "file type with its per-tensor mix, as llama-quantize without an importance matrix "
        "(e.g. Q4_K_M keeps output.weight and, in the first/last eighth and every third "
        "layer, attn_v and ffn_down at Q6_K; rows not a multiple of 256 fall back to "
        "Q4_0/Q5_0/Q5_1/Q8_0). Metadata and tokenizer are copied. Progress goes to stderr.",
        formatter_class=HELP_FMT,
    )
    p.add_argument(
        "input", metavar="IN.gguf",
        help="GGUF file to read; a split model: its first shard or directory (written as one file)",
    )  # fmt: skip
    p.add_argument("output", metavar="OUT.gguf", help="GGUF file to write (not the input)")
    p.add_argument(
        "--type", dest="ftype", default="Q4_K_M", type=str.upper, choices=list(FTYPES),
        help="file type",
    )  # fmt: skip
    p.add_argument(
        "-t", "--threads", type=int, default=0,
        help="quantizer threads (0: all cores)",
    )  # fmt: skip
    p.set_defaults(func=main)


def main(args) -> int:
    from ..gguf.quantize import quantize_cli

    quantize_cli(args.input, args.output, args.ftype, args.threads)
    return 0
