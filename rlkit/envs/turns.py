"""Environment turns as token ids, appended to a conversation that is never re-tokenised.

A multi-turn rollout keeps the policy's sampled tokens exactly as sampled: decoding them to text and encoding
the whole history again can give other ids (BPE merges across a turn boundary, whitespace the template
normalises), and then the trainer scores tokens the policy never drew. So the environment's turns are
encoded on their own and appended: `TurnEncoder.first` renders the opening observation, and
`TurnEncoder.next` gives the ids of one more environment turn and of the generation prompt after it.

With a chat template the ids of a new turn come from the template itself, by difference: render a fixed
conversation ending with an assistant turn, then the same conversation plus the new messages with the
generation prompt; the text the second adds after the assistant's end-of-turn marker is the new turn. (The
marker is where generation stopped: the policy sampled it.) Without a chat template the observation text is
appended as it is.
"""

from __future__ import annotations

from typing import Any, Sequence

# A conversation that ends with an assistant turn: what the template writes after that turn's end marker,
# given new messages, is the same whatever the earlier turns said.
_PROBE = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]


def as_messages(observation: str | Sequence[dict], role: str = "user") -> list[dict]:
    """An observation as chat messages: a string is one `role` message, a message list is kept."""
    if isinstance(observation, str):
        return [{"role": role, "content": observation}]
    return [dict(m) for m in observation]


class TurnEncoder:
    """Token ids of environment turns for one tokenizer (chat template or plain text).

    tokenizer: the policy's tokenizer. chat: use its chat template (needs one). system_prompt: a system message
    opening every conversation (chat only). tools: JSON schemas passed to the template as `tools=` (the
    template decides where they go: Qwen's lists them in the system message)."""

    def __init__(self, tokenizer: Any, *, chat: bool, system_prompt: str | None = None,
                 tools: list[dict] | None = None):
        if chat and getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("env: the observations need the chat template (data.use_chat_template) but the "
                             "tokenizer has none: set data.use_chat_template = false to append plain text")
        self.tokenizer, self.chat, self.system_prompt, self.tools = tokenizer, chat, system_prompt, tools or None
        if chat:
            rendered = self._render(_PROBE, generation_prompt=False)
            body = rendered.rindex(_PROBE[-1]["content"]) + len(_PROBE[-1]["content"])
            self.end_of_turn_text = rendered[body:].rstrip()
            """What the template writes after an assistant message up to its end marker ("<|im_end|>")."""
            self.end_of_turn_ids = self._encode(self.end_of_turn_text)
            """Its ids: appended as an environment token when a policy turn was cut before its end marker."""
            end = rendered.rindex(self.end_of_turn_text) + len(self.end_of_turn_text) if self.end_of_turn_text \
                else len(rendered)
            self._before_turn = rendered[:end]  # the probe conversation up to its assistant turn's end marker
        self.template_ignores_tools = bool(chat and self.tools) and \
            self._render(_PROBE[:1], generation_prompt=True) == tokenizer.apply_chat_template(
                ([{"role": "system", "content": system_prompt}] if system_prompt else []) + _PROBE[:1],
                tokenize=False, add_generation_prompt=True)
        """True when the chat template writes nothing for `tools=` (SmolLM2's): the model is not told about the
        tools unless the prompt (data.system_prompt) describes them."""

    def _render(self, messages: list[dict], *, generation_prompt: bool) -> str:
        if self.system_prompt is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        kwargs = {"tools": self.tools} if self.tools else {}
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                                  **kwargs)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def first(self, observation: str | Sequence[dict]) -> list[int]:
        """The opening prompt's ids: the observation with the generation prompt (chat), or its plain text with
        the tokenizer's default special tokens (a BOS where the tokenizer adds one)."""
        if not self.chat:
            if not isinstance(observation, str):
                raise TypeError("the opening observation is a message list but the chat template is off "
                                "(data.use_chat_template = false): return a string")
            return list(self.tokenizer(observation)["input_ids"])
        return self._encode(self._render(as_messages(observation), generation_prompt=True))

    def next(self, observation: str | Sequence[dict], *, turn_ended: bool, role: str = "user") -> list[int]:
        """Ids to append after a policy turn: the end-of-turn marker when the turn was cut before sampling it
        (`turn_ended` False), the observation's messages (a string becomes one `role` message), and the
        generation prompt of the next policy turn. Plain text: the observation's text alone."""
        if not self.chat:
            if not isinstance(observation, str):
                raise TypeError("the observation is a message list but the chat template is off "
                                "(data.use_chat_template = false): return a string")
            return self._encode(observation)
        full = self._render(_PROBE + as_messages(observation, role), generation_prompt=True)
        cut = len(self._before_turn)
        if not full.startswith(self._before_turn):
            raise ValueError("env: the chat template does not render a conversation incrementally (adding a turn "
                             "changed the text before it), so environment turns cannot be appended token for "
                             "token; set data.use_chat_template = false and format turns in the environment")
        closing = [] if turn_ended else self.end_of_turn_ids
        return closing + self._encode(full[cut:])


__all__ = ["TurnEncoder", "as_messages"]
