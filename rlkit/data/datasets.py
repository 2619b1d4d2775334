"""Prompt datasets from any source, and the tokenizer glue around generation.

`load_prompt_dataset` turns the built-in task, a local .jsonl/.parquet file or a
`datasets.Dataset` into one uniform `datasets.Dataset` with two string columns,
`prompt` and `ground_truth`, validated row by row so that a bad row fails at
load time with its row number, not deep inside a rollout.

`encode_prompts` LEFT-pads (the layout `rlkit.batch.Batch` expects: the last
prompt token of every row at column P-1, where generation continues);
`decode_responses` gives back the text and EOS flag the reward functions take.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from rlkit.data.arithmetic import ArithmeticTask

BUILTIN_TASKS = ("arithmetic",)
# Default sizes of the built-in task's splits (a few epochs of a tiny run / one eval pass).
DEFAULT_TASK_ROWS = {"train": 4096, "eval": 64}


def load_prompt_dataset(
    source: str | os.PathLike | datasets.Dataset | datasets.DatasetDict,
    prompt_key: str = "prompt",
    answer_key: str | None = "ground_truth",
    split: str | None = None,
    *,
    num_rows: int | None = None,
    task_kwargs: dict[str, Any] | None = None,
) -> datasets.Dataset:
    """Load prompts as a `datasets.Dataset` with exactly the columns `prompt` and `ground_truth` (str).

    source:
      - "arithmetic": the built-in task; `split` is "train" (default) or "eval",
        `num_rows` defaults to 4096 / 64, `task_kwargs` go to `ArithmeticTask`
        (digits, operators, seed, ...). The two splits never share a prompt.
      - a path to a `.jsonl` / `.json` (one object per line) or `.parquet` file;
        a file is one split, so `split` is ignored.
      - a `datasets.Dataset` (one split, `split` ignored) or `datasets.DatasetDict`
        (`split` picks the member).
    prompt_key / answer_key: the source's column names; `answer_key=None` for
    prompts without a reference answer (reward-model tasks): ground_truth is "".
    num_rows: keep the first `num_rows` rows (files and datasets too).

    Raises FileNotFoundError (missing file), KeyError naming the missing column
    and the source, ValueError naming the first bad row (empty or non-string prompt,
    a ground truth that is not a string or an integer).
    """
    if num_rows is not None and num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}")
    if isinstance(source, str) and source in BUILTIN_TASKS:
        return _load_builtin(source, split or "train", num_rows, task_kwargs or {})
    if task_kwargs:
        raise ValueError(f"task_kwargs are only for the built-in tasks {BUILTIN_TASKS}, not for {source!r}")

    if isinstance(source, datasets.DatasetDict):
        if split is None or split not in source:
            raise KeyError(f"DatasetDict has splits {sorted(source)}; pass split= one of them (got {split!r})")
        records, columns, where = None, source[split], f"DatasetDict split {split!r}"
    elif isinstance(source, datasets.Dataset):
        records, columns, where = None, source, "the given Dataset"
    elif isinstance(source, (str, os.PathLike)):
        records, columns = _read_file(Path(source))
        where = f"file {os.fspath(source)!r}"
    else:
        raise TypeError(
            f"prompt source must be a task name {BUILTIN_TASKS}, a .jsonl/.parquet path or a datasets.Dataset, "
            f"got {type(source).__name__}"
        )

    if records is None:  # a (parquet-backed or in-memory) table: whole columns
        names = columns.column_names
        _check_columns(names, prompt_key, answer_key, where)
        if num_rows is not None:
            columns = columns.select(range(min(num_rows, len(columns))))
        prompts = columns[prompt_key]
        answers = columns[answer_key] if answer_key is not None else [""] * len(prompts)
    else:  # jsonl: one dict per line, keys may differ between rows
        names = sorted({k for r in records for k in r})
        _check_columns(names, prompt_key, answer_key, where)
        records = records if num_rows is None else records[:num_rows]
        for i, record in enumerate(records):
            for key in (prompt_key, answer_key):
                if key is not None and key not in record:
                    raise ValueError(f"{_row(i, records)} of {where} has no {key!r} field (its fields: {sorted(record)})")
        prompts = [r[prompt_key] for r in records]
        answers = [r[answer_key] if answer_key is not None else "" for r in records]

    rows = {"prompt": [], "ground_truth": []}
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        rows["prompt"].append(_check_prompt(prompt, f"{_row(i, records)} of {where}", prompt_key))
        rows["ground_truth"].append(_check_answer(answer, f"{_row(i, records)} of {where}", answer_key))
    return _to_dataset(rows)


def _load_builtin(name: str, split: str, num_rows: int | None, task_kwargs: dict[str, Any]) -> datasets.Dataset:
    if split not in DEFAULT_TASK_ROWS:
        raise ValueError(f"built-in task {name!r} has splits {sorted(DEFAULT_TASK_ROWS)}, got split={split!r}")
    task = ArithmeticTask(**task_kwargs)
    problems = task.problems(DEFAULT_TASK_ROWS[split] if num_rows is None else num_rows, split)
    return _to_dataset({"prompt": [p["prompt"] for p in problems], "ground_truth": [p["ground_truth"] for p in problems]})


def _read_file(path: Path) -> tuple[list[_Record] | None, datasets.Dataset | None]:
    """(records, None) for json lines, (None, table) for parquet."""
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {os.fspath(path)!r} does not exist (resolved to {path.resolve()})")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        # Parsed here rather than by `datasets.load_dataset`: a broken line is reported
        # with its line number, and mixed types in a column reach our row checks.
        records = []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"line {line_no} of file {os.fspath(path)!r} is not valid JSON: {err}") from err
                if not isinstance(record, dict):
                    raise ValueError(
                        f"line {line_no} of file {os.fspath(path)!r} must be a JSON object, got {type(record).__name__}"
                    )
                records.append(_Record(record, line_no))
        return records, None
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # a dependency of `datasets`

        return None, datasets.Dataset(pq.read_table(path))
    raise ValueError(f"prompt file {os.fspath(path)!r}: unsupported extension {suffix!r}; use .jsonl or .parquet")


def _check_columns(names: Sequence[str], prompt_key: str, answer_key: str | None, where: str) -> None:
    for key, role in ((prompt_key, "prompt_key"), (answer_key, "answer_key")):
        if key is not None and key not in names:
            raise KeyError(f"column {key!r} ({role}) not found in {where}; its columns are {list(names)}")


class _Record(dict):
    """One json line, remembering its line number for error messages."""

    def __init__(self, data: dict, line_no: int):
        super().__init__(data)
        self.line_no = line_no


def _row(i: int, records: list[_Record] | None) -> str:
    """'row 3' or, for json lines, 'row 3 (line 5)': blank lines make the two differ."""
    return f"row {i}" if records is None else f"row {i} (line {records[i].line_no})"


def _check_prompt(value: Any, row: str, key: str) -> str:
    if not isinstance(value, str):
        raise ValueError(
            f"{row}: column {key!r} must be a string, got {type(value).__name__} {value!r:.80} "
            "(chat message lists are not supported: render them to text first)"
        )
    if not value.strip():
        raise ValueError(f"{row}: column {key!r} is empty")
    return value


def _check_answer(value: Any, row: str, key: str | None) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # jsonl files often store numeric answers as numbers
    raise ValueError(
        f"{row}: column {key!r} must be a string or an integer, got {type(value).__name__} {value!r:.80}"
    )


def _to_dataset(rows: dict[str, list[str]]) -> datasets.Dataset:
    features = datasets.Features({"prompt": datasets.Value("string"), "ground_truth": datasets.Value("string")})
    return datasets.Dataset.from_dict(rows, features=features)


# --- tokenizer glue ---


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_len: int,
    *,
    chat_template: bool = False,
    truncation: str = "error",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize prompts LEFT-padded to the longest one -> (prompt_ids (B, P) long, prompt_mask (B, P) long).

    chat_template: wrap each prompt as one user message and apply the
      tokenizer's chat template with the generation prompt (the template adds
      its own BOS, so no other special tokens are added); otherwise the text is
      encoded with the tokenizer's default special tokens.
    truncation: "error" (default) raises naming the row when a prompt is longer
      than `max_len` tokens; "left" keeps its last `max_len` tokens (the end of
      a prompt is what the answer depends on).
    """
    if truncation not in ("error", "left"):
        raise ValueError(f"truncation must be 'error' or 'left', got {truncation!r}")
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    if len(prompts) == 0:
        raise ValueError("encode_prompts got no prompts")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("tokenizer has neither a pad nor an eos token to left-pad prompts with")

    if chat_template:
        if tokenizer.chat_template is None:
            raise ValueError("chat_template=True but the tokenizer has no chat template")
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    else:
        encoded = tokenizer(list(prompts))["input_ids"]

    rows = []
    for i, ids in enumerate(encoded):
        if len(ids) == 0:
            raise ValueError(f"prompt {i} ({prompts[i]!r:.80}) encodes to no tokens")
        if len(ids) > max_len:
            if truncation == "error":
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens, more than max_len={max_len} "
                    f"({prompts[i]!r:.80}); raise the max prompt length or pass truncation='left'"
                )
            ids = ids[-max_len:]
        rows.append(ids)

    width = max(len(ids) for ids in rows)
    prompt_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, P)
    prompt_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, P)
    for i, ids in enumerate(rows):
        prompt_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        prompt_mask[i, width - len(ids) :] = 1
    return prompt_ids, prompt_mask


def decode_responses(
    tokenizer: PreTrainedTokenizerBase, response_ids: torch.Tensor, response_mask: torch.Tensor | None = None
) -> tuple[list[str], torch.Tensor]:
    """Right-padded responses (B, T) -> (texts, eos_seen (B,) bool): the inputs of the reward rules.

    Each text is the response up to (not including) its first EOS among the
    valid tokens, decoded without special tokens. `eos_seen[i]` is True iff row
    i emitted EOS. Tokens after the first EOS are ignored, whatever they are.
    """
    if response_ids.dim() != 2:
        raise ValueError(f"response_ids must be (B, T), got shape {tuple(response_ids.shape)}")
    if response_mask is None:
        response_mask = torch.ones_like(response_ids)
    eos_ids = tokenizer.eos_token_id
    eos_ids = set(eos_ids if isinstance(eos_ids, (list, tuple)) else [eos_ids]) - {None}
    texts, eos_seen = [], []
    for ids, mask in zip(response_ids.tolist(), response_mask.tolist()):
        valid = [t for t, m in zip(ids, mask) if m]
        cut = next((j for j, t in enumerate(valid) if t in eos_ids), None)
        eos_seen.append(cut is not None)
        texts.append(tokenizer.decode(valid if cut is None else valid[:cut], skip_special_tokens=True))
    return texts, torch.tensor(eos_seen, dtype=torch.bool)
