"""A character-level tokenizer built offline, for tiny models and built-in tasks.

Why this shape: the tokenizer is a byte-level BPE with an empty merge list, so
every printable ASCII character (and newline) is exactly one token. That is the
same pipeline transformers' `Qwen2Tokenizer` rebuilds from a saved
`tokenizer.json` (for a folder whose `config.json` says `qwen2`, `AutoTokenizer`
ignores the saved `tokenizer_class` and reconstructs a `Qwen2Tokenizer` from the
vocabulary). With no merges, that reconstruction tokenizes exactly as we do, so
a saved qwen2 or llama folder loads back with identical ids, special tokens and
vocabulary (`tests/test_models.py` checks both).

Vocabulary (103 tokens): 7 special tokens at ids 0..6, then the 96 characters
` ` (space) .. `~` and `\\n`. Characters outside it (accents, emoji, tabs) are
dropped on encode: the tiny models never need them, and a real model brings its
own tokenizer. No BOS/EOS is added by `tokenizer(text)`: arithmetic prompts are
the raw text (`"37+48="`) and the model must learn to emit `<|eos|>` itself.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
# An explicit unk token keeps the vocabulary identical after reloading: Qwen2Tokenizer
# otherwise adds its own default unk "<|endoftext|>" as a 104th token.
UNK_TOKEN = "<|unk|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, *ROLE_TOKENS)

# Printable ASCII plus newline: digits, + - * =, letters, punctuation, space.
CHARACTERS = tuple(chr(c) for c in range(32, 127)) + ("\n",)

# A minimal chat template over the role tokens:
#   [{"role": "user", "content": "37+48="}] + generation prompt -> "<|user|>37+48=<|assistant|>"
# An assistant turn ends with <|eos|>, the token generation stops at.
# A "tool" message (a tool's result in a multi-turn episode, rlkit.envs) is written as a user turn: the
# vocabulary has no tool role token.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('chat role must be system, user, assistant or tool, got ' + message['role']) }}"
    "{% endif %}"
    "<|{{ 'user' if message['role'] == 'tool' else message['role'] }}|>{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}<|eos|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _byte_level_symbols(chars: tuple[str, ...]) -> list[str]:
    """The byte-level BPE symbol of each character (e.g. " " -> "Ġ", "\\n" -> "Ċ", "7" -> "7")."""
    splitter = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    symbols = []
    for ch in chars:
        pieces = splitter.pre_tokenize_str(ch)
        if len(pieces) != 1:  # pragma: no cover - holds for every ASCII character
            raise ValueError(f"character {ch!r} does not map to one byte-level symbol: {pieces}")
        symbols.append(pieces[0][0])
    return symbols


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """Build the character-level tokenizer (103 tokens, pad/bos/eos/unk + role tokens, chat template).

    Deterministic: the same ids on every call and every machine, no downloads.
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for symbol in _byte_level_symbols(CHARACTERS):
        vocab[symbol] = len(vocab)

    # unk_token=None in the BPE model: unknown characters are dropped, as in the
    # Qwen2Tokenizer reconstruction (which would otherwise tokenize differently).
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    # normalized=False: "<|eos|>" in a text is matched before byte-level splitting.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        extra_special_tokens=list(ROLE_TOKENS),
        model_max_length=2048,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    expected = len(SPECIAL_TOKENS) + len(CHARACTERS)
    if len(tokenizer) != expected:  # pragma: no cover - guards future edits
        raise AssertionError(f"char tokenizer has {len(tokenizer)} tokens, expected {expected}")
    return tokenizer
