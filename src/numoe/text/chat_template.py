"""Chat templates, rendered with Jinja2's immutable sandbox set up like `transformers`.

The model's template is ``tokenizer.chat_template``; a model without one gets ChatML. The
built-in ChatML and Mistral ``[INST]`` templates also serve the synthetic vocabularies.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any, ClassVar

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

log = logging.getLogger(__name__)

__all__ = ["CHATML_TEMPLATE", "MISTRAL_TEMPLATE", "render_chat"]

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


class _GenerationExt(Extension):
    """transformers' ``{% generation %}`` tag: renders its body."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


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
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationExt, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def render_chat(
    templates: dict[str, Any],
    source: str | None,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool,
    variables: dict[str, Any],
) -> str:
    """Render the template ``source`` (None: ChatML, with a warning) as transformers does.

    ``templates`` caches compiled templates by source (the caller owns it). ``variables``
    are passed to the template; ``tools`` and ``documents`` default to None. Template
    errors (including sandbox violations, which raise `jinja2.exceptions.SecurityError`)
    propagate as `jinja2.TemplateError`.
    """
    if source is None:
        log.warning("tokenizer: the model has no chat template; using ChatML")
        source = CHATML_TEMPLATE
    tmpl = templates.get(source)
    if tmpl is None:
        tmpl = _make_jinja_env().from_string(source)
        templates[source] = tmpl
    return tmpl.render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        **{"tools": None, "documents": None, **variables},
    )
