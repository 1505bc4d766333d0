"""numoe: run huge Mixture-of-Experts LLMs from GGUF files, experts in RAM on the CPU.

Kept light on purpose: importing ``numoe`` imports neither torch nor the C++ extension
(``numoe._cpu``); submodules load what they need.
"""

__version__ = "0.1.0"
