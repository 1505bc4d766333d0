"""Chat templates, rendered with Jinja2's immutable sandbox set up like `transformers`,
with a time and a size limit; every error is one line, a `ChatTemplateError`.

The model's template is ``tokenizer.chat_template``; a model without one gets ChatML. The
built-in ChatML and Mistral ``[INST]`` templates also serve the synthetic vocabularies.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import re
import threading
from datetime import datetime
from typing import Any, ClassVar

import jinja2
from jinja2.compiler import CodeGenerator
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..quote import one_line, quote

log = logging.getLogger(__name__)

__all__ = ["CHATML_TEMPLATE", "MISTRAL_TEMPLATE", "ChatTemplateError", "render_chat"]

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

MISTRAL_TEMPLATE = (
    "{{- bos_token }}"
    "{%- set ns = namespace(system='') %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{%- set ns.system = message['content'] + '\\n\\n' %}"
    "{%- elif message['role'] == 'user' %}"
    "{{- '[INST] ' + ns.system + message['content'] + ' [/INST]' }}"
    "{%- set ns.system = '' %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- message['content'] + eos_token }}"
    "{%- else %}"
    "{{- raise_exception('Only system, user and assistant roles are supported') }}"
    "{%- endif %}"
    "{%- endfor %}"
)


class ChatTemplateError(ValueError, jinja2.TemplateError):
    """A chat template (from the model's file, or given) failed to compile or render: a
    syntax error, a refused attribute, `raise_exception`, an undefined name, include or
    extends, recursion, or a render past the time or size limit. One line; the template's
    own text in it is escaped and cut short."""


# Limits of one render, read at each call. A chat template is code from the model's file:
# the sandbox keeps it from Python's internals, these keep it from hanging the process
# (nested loops) or exhausting its memory (a string doubled in a loop).
TIME_LIMIT = 5.0  # seconds
MAX_CHARS = 1 << 24  # characters (or items) of the output and of any value built on the way
MAX_INT_BITS = 1 << 16  # bits of an integer built on the way
_BIG_WIDTH = re.compile(r"\d{8,}")  # a format width or precision of 10^7 or more


class _TooBig(Exception):
    pass


class _Timeout(Exception):
    pass


def _checked(v: Any) -> Any:
    """`v` when within the limits, else _TooBig."""
    if isinstance(v, str | list | tuple | dict | bytes) and len(v) > MAX_CHARS:
        raise _TooBig(f"a value of {len(v)} items")
    if isinstance(v, int) and v.bit_length() > MAX_INT_BITS:
        raise _TooBig(f"an integer of {v.bit_length()} bits")
    return v


def _no_big_ints(args) -> None:
    """Refuse an integer argument that would make a value past the limits (a width, a
    count) before it is built."""
    for a in args:
        if isinstance(a, int) and abs(a) > MAX_CHARS:
            raise _TooBig(f"an argument of {a}")


def _join(parts) -> str:
    """Environment.concat (the output, a block `set`, a macro's text), size-checked."""
    out, n = [], 0
    for p in parts:
        n += len(p)
        if n > MAX_CHARS:
            raise _TooBig(f"text of more than {MAX_CHARS} characters")
        out.append(p)
    return "".join(out)


class _CheckedConcat(CodeGenerator):
    """`a ~ b` (Jinja's string concatenation, not an intercepted operator) size-checked."""

    def visit_Concat(self, node, frame) -> None:
        self.write("environment.checked(")
        super().visit_Concat(node, frame)
        self.write(")")


class _NoLoader(jinja2.BaseLoader):
    def get_source(self, environment, template):
        raise jinja2.TemplateError(
            f"include, import or extends of {quote(template)}: a chat template cannot load "
            "other templates"
        )


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox with limits: the operators that can build big values (*, **, +, %)
    check sizes first, `~`, calls and filters check what they made."""

    code_generator_class = _CheckedConcat
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    concat = staticmethod(_join)
    checked = staticmethod(_checked)

    def call_binop(self, context, operator, left, right):
        seqs = str | list | tuple
        if operator == "*":
            for a, b in ((left, right), (right, left)):
                if isinstance(a, seqs) and isinstance(b, int) and len(a) * b > MAX_CHARS:
                    raise _TooBig(f"{len(a)} items times {b}")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if abs(left) > 1 and right > 0 and left.bit_length() * right > MAX_INT_BITS:
                raise _TooBig(f"a power of {left.bit_length() * right} bits")
        elif operator == "+" and isinstance(left, seqs) and isinstance(right, seqs):
            if len(left) + len(right) > MAX_CHARS:
                raise _TooBig(f"{len(left) + len(right)} items")
        elif operator == "%" and isinstance(left, str) and _BIG_WIDTH.search(left):
            raise _TooBig("a format width of 10^7 or more")
        return _checked(super().call_binop(context, operator, left, right))

    def call(self, context, obj, /, *args, **kwargs):
        _no_big_ints((*args, *kwargs.values()))
        return _checked(super().call(context, obj, *args, **kwargs))

    def wrap_str_format(self, value):
        fmt = super().wrap_str_format(value)
        if fmt is not None and _BIG_WIDTH.search(value.__self__):
            raise _TooBig("a format width of 10^7 or more")
        return fmt


def _checked_filter(f):
    @functools.wraps(f)  # keeps Jinja's pass_context / pass_environment marks
    def g(*args, **kwargs):
        _no_big_ints((*args, *kwargs.values()))
        return _checked(f(*args, **kwargs))

    return g


class _GenerationExt(Extension):
    """transformers' ``{% generation %}`` tag: renders its body."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


class _Raised(jinja2.TemplateError):
    """raise_exception(message) in a template."""


def _raise_exception(message):
    raise _Raised(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(
        x,
        ensure_ascii=ensure_ascii,
        indent=indent,
        separators=separators,
        sort_keys=sort_keys,
    )


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _make_jinja_env():
    env = _Sandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationExt, loopcontrols],
        loader=_NoLoader(),
    )
    env.filters["tojson"] = _tojson
    env.filters = {name: _checked_filter(f) for name, f in env.filters.items()}
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise _Timeout in this thread once `seconds` have passed (a timer thread sets an
    asynchronous exception, raised at the next Python instruction the template runs)."""
    tid, lock, state = threading.get_ident(), threading.Lock(), {"done": False, "fired": False}
    set_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc

    def fire():
        with lock:
            if not state["done"]:
                state["fired"] = True
                set_exc(ctypes.c_ulong(tid), ctypes.py_object(_Timeout))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            state["done"] = True
            if state["fired"]:  # not raised yet: take it back
                set_exc(ctypes.c_ulong(tid), None)
        timer.cancel()


def _error(e: BaseException) -> ChatTemplateError:
    if isinstance(e, _Timeout):
        why = f"rendering took longer than {TIME_LIMIT:g} s"
    elif isinstance(e, _TooBig):
        why = f"too large a value ({e}; the limit is {MAX_CHARS} characters)"
    elif isinstance(e, RecursionError):
        why = "recursion too deep"
    elif isinstance(e, MemoryError):
        why = "out of memory"
    elif isinstance(e, _Raised):
        why = f"raise_exception({quote(e.message, 200)})"
    elif isinstance(e, jinja2.TemplateSyntaxError):
        why = f"syntax error on line {e.lineno}: {one_line(str(e.message), 200)}"
    else:
        why = f"{type(e).__name__}: {one_line(str(e), 200)}"
    return ChatTemplateError(f"chat template: {why}")


def render_chat(
    templates: dict[str, Any],
    source: str | None,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool,
    variables: dict[str, Any],
) -> str:
    """Render the template ``source`` (None: ChatML, with a warning) as transformers does.

    ``templates`` caches compiled templates by source (the caller owns it). ``variables``
    are passed to the template; ``tools`` and ``documents`` default to None. Any error of
    the template (syntax, sandbox violations, `raise_exception`, undefined names, include,
    recursion, TIME_LIMIT or MAX_CHARS exceeded) is a one-line `ChatTemplateError` (a
    ValueError and a `jinja2.TemplateError`).
    """
    if source is None:
        log.warning("tokenizer: the model has no chat template; using ChatML")
        source = CHATML_TEMPLATE
    try:
        with _time_limit(TIME_LIMIT):
            tmpl = templates.get(source)
            if tmpl is None:
                tmpl = _make_jinja_env().from_string(source)
                templates[source] = tmpl
            return tmpl.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                **{"tools": None, "documents": None, **variables},
            )
    except Exception as e:  # the template is code from the file: any error is its error
        raise _error(e) from e
