"""Chat templates: a model's own Jinja template (from its GGUF metadata or its bundle's manifest) turns a
list of messages into the prompt text it was fine-tuned on.

Templates come from files a user downloaded, so they render in Jinja's immutable sandbox (no attribute
access to Python internals, no mutation), as transformers does; a template that fails to render is a
one-line error. numpy-free, torch-free: jinja2 only.
"""
from __future__ import annotations

from typing import Sequence

ROLES = ("system", "user", "assistant")
MAX_TEMPLATE_CHARS = 100_000


def check_messages(messages: Sequence[dict]) -> list[dict]:
    """Messages as the templates expect them: [{"role": "user", "content": "..."}, ...]."""
    if isinstance(messages, (str, bytes)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or not {"role", "content"} <= set(m):
            raise ValueError(f"message {i} must be {{'role': ..., 'content': ...}}, got {m!r:.80}")
        if m["role"] not in ROLES:
            raise ValueError(f"message {i}: role must be one of {', '.join(ROLES)}, got {m['role']!r}")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {i}: content must be text")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] == "assistant":
        raise ValueError("the last message is the assistant's: nothing to answer")
    return out


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        if not isinstance(source, str) or not source.strip():
            raise ValueError("the chat template is empty")
        if len(source) > MAX_TEMPLATE_CHARS:
            raise ValueError(f"the chat template is {len(source)} characters; at most {MAX_TEMPLATE_CHARS}")
        try:
            from jinja2 import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError as e:
            raise ImportError("chat templates need the 'jinja2' package: pip install jinja2") from e
        self._error = TemplateError
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])

        def raise_exception(message):
            raise TemplateError(message)

        env.globals["raise_exception"] = raise_exception
        try:
            self._template = env.from_string(source)
        except TemplateError as e:
            raise ValueError(f"the chat template does not parse: {e}") from None
        self.source, self.bos_token, self.eos_token = source, bos_token, eos_token

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        msgs = check_messages(messages)
        try:
            return self._template.render(messages=msgs, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token)
        except self._error as e:
            raise ValueError(f"the chat template failed: {e}") from None
        except Exception as e:  # a template bug surfaces as any Python error inside the sandbox
            raise ValueError(f"the chat template failed: {type(e).__name__}: {e}") from None
