"""`numoe` command line: run | chat | serve | bench | tune | synth | quantize | doctor.

Flags follow llama.cpp's names (-m, -p, -n, -t, -c, --temp, --top-k ...); KTransformers'
names are accepted as aliases (--gguf-path, --cpu-infer).

Imports inside functions, here and in the command modules, are on purpose: a command imports
the engine (torch, the models) only in the function that runs a model, so `numoe --help` and
the commands that run none start without loading it (start-up time).
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__


def _parser() -> argparse.ArgumentParser:
    from . import bench, chat, doctor, quantize, run, serve, synth, tune

    p = argparse.ArgumentParser(
        prog="numoe",
        description="Run Mixture-of-Experts GGUF models: experts on the CPU, the rest on "
        "the CPU or a GPU.",
    )
    p.add_argument("--version", action="version", version=f"numoe {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in (run, chat, serve, bench, tune, synth, quantize, doctor):
        mod.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # not numoe.cache or numoe.placement: they import torch (DeviceError is a ValueError)
    from ..errors import ContextFull
    from ..quote import one_line
    from .common import FlagError

    try:
        return args.func(args) or 0
    except BrokenPipeError:
        return _broken_pipe()
    except FlagError as e:
        # a flag this machine cannot honour: exit status 2, as argparse's flag errors
        print(f"numoe: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except (ValueError, ContextFull, OSError) as e:
        # GGUFError, bad flags and bad files: one line naming the problem, no traceback
        # (escaped and cut: the names in it may come from the file)
        print(f"numoe: error: {one_line(str(e))}", file=sys.stderr)
        return 1
    except MemoryError:
        print("numoe: error: out of memory (a smaller -c or model?)", file=sys.stderr)
        return 1
    except RuntimeError as e:
        # torch's failed allocation (CPU or CUDA) is a RuntimeError: one line, not a traceback
        text = str(e)
        if "out of memory" not in text.lower() and "can't allocate" not in text:
            raise
        print(f"numoe: error: out of memory: {one_line(text)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def _broken_pipe() -> int:
    """The reader of stdout went away (`numoe run ... | head`): end quietly with 141 (128 +
    SIGPIPE, what a shell reports for a tool the pipe stopped), as the Python docs say: point
    stdout at /dev/null so that the flush at exit does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return 141
