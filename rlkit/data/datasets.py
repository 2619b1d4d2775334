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
      - a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`.
      - a `datasets.Dataset` (one split, `split` ignored) or `datasets.DatasetDict`
        (`split` picks the member).
      - any other string is a hub dataset name for `datasets.load_dataset` (`split` picks the member).
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

    raw, where = _open_source(source)
    if isinstance(raw, datasets.DatasetDict):
        raw, where = _pick_split(raw, split, where), f"split {split!r} of {where}"
    return _validate(raw, where, prompt_key, answer_key, num_rows)


def load_prompt_split(data: Any, split: str, *, num_rows: int | None = None) -> datasets.Dataset:
    """The "train" or "eval" prompts described by a `rlkit.config.DataConfig`.

    Reads `data.source, prompt_key, answer_key, digits, operators, seed, train_size, eval_size`.
    Rows: `num_rows`, else `train_size` / `eval_size`. Train and eval never share a row:
    - the built-in task: its own disjoint splits (seeded by `data.seed`);
    - a source with named splits (a DatasetDict folder, a hub dataset): "train" and
      the first of "eval", "validation", "test" that exists;
    - a single table (a file, a Dataset folder): shuffled with `data.seed`, the first
      `eval_size` rows are eval, the rest train.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    n = num_rows if num_rows is not None else (data.train_size if split == "train" else data.eval_size)
    if data.source in BUILTIN_TASKS:
        task_kwargs = {"digits": data.digits, "operators": tuple(data.operators), "seed": data.seed}
        return load_prompt_dataset(data.source, split=split, num_rows=n, task_kwargs=task_kwargs)

    raw, where = _open_source(data.source)
    if isinstance(raw, datasets.DatasetDict):
        names = ["train"] if split == "train" else [s for s in ("eval", "validation", "test") if s in raw]
        name = names[0] if names else split
        table = _pick_split(raw, name, where)
        return _validate(table, f"split {name!r} of {where}", data.prompt_key, data.answer_key, n)

    table = _validate(raw, where, data.prompt_key, data.answer_key, None).shuffle(seed=data.seed)
    held_out = min(data.eval_size, len(table))
    rows = range(held_out) if split == "eval" else range(held_out, len(table))
    if split == "train" and len(rows) == 0:
        raise ValueError(
            f"{where} has {len(table)} rows and data.eval_size={data.eval_size} holds them all out: "
            "none left to train on"
        )
    return table.select(list(rows)[:n])


def _validate(
    raw: datasets.Dataset | list[_Record], where: str, prompt_key: str, answer_key: str | None, num_rows: int | None
) -> datasets.Dataset:
    """Check the columns and every row of a table (or json records) -> the uniform {prompt, ground_truth} Dataset."""
    records = raw if isinstance(raw, list) else None
    if records is None:  # a (parquet-backed or in-memory) table: whole columns
        columns = raw
        _check_columns(columns.column_names, prompt_key, answer_key, where)
        if num_rows is not None:
            columns = columns.select(range(min(num_rows, len(columns))))
        prompts = columns[prompt_key]
        answers = columns[answer_key] if answer_key is not None else [""] * len(prompts)
    else:  # jsonl: one dict per line, keys may differ between rows
        _check_columns(sorted({k for r in records for k in r}), prompt_key, answer_key, where)
        records = records if num_rows is None else records[:num_rows]
        for i, record in enumerate(records):
            for key in (prompt_key, answer_key):
                if key is not None and key not in record:
                    raise ValueError(
                        f"{_row(i, records)} of {where} has no {key!r} field (its fields: {sorted(record)})"
                    )
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
    return _to_dataset(
        {"prompt": [p["prompt"] for p in problems], "ground_truth": [p["ground_truth"] for p in problems]}
    )


def _open_source(source: Any) -> tuple[datasets.Dataset | datasets.DatasetDict | list[_Record], str]:
    """(a table, a DatasetDict or json records; a description for errors) of any non-task source."""
    if isinstance(source, datasets.Dataset):
        return source, "the given Dataset"
    if isinstance(source, datasets.DatasetDict):
        return source, "the given DatasetDict"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"prompt source must be a task name {BUILTIN_TASKS}, a .jsonl/.parquet path, a dataset folder or name, "
            f"or a datasets.Dataset; got {type(source).__name__}"
        )
    name = os.fspath(source)
    path = Path(name).expanduser()
    if path.is_dir():
        return datasets.load_from_disk(str(path), keep_in_memory=True), f"folder {name!r}"
    if path.is_file() or path.suffix.lower() in _FILE_SUFFIXES or _looks_like_local_path(name):
        return _read_file(path), f"file {name!r}"
    # A hub dataset name ("openai/gsm8k"): downloads unless HF_DATASETS_OFFLINE=1.
    try:
        loaded = datasets.load_dataset(name)
    except Exception as err:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ...)
        raise FileNotFoundError(
            f"prompt source {name!r} is neither a built-in task {BUILTIN_TASKS}, a local file or folder, "
            f"nor a loadable hub dataset: {type(err).__name__}: {err}"
        ) from err
    return loaded, f"dataset {name!r}"


def _pick_split(dd: datasets.DatasetDict, split: str | None, where: str) -> datasets.Dataset:
    if split is None or split not in dd:
        raise KeyError(f"{where} has splits {sorted(dd)}; pass split= one of them (got {split!r})")
    return dd[split]


_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def _looks_like_local_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def _read_file(path: Path) -> list[_Record] | datasets.Dataset:
    """Json lines -> records (one per non-blank line); parquet -> a table."""
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
        return records
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # a dependency of `datasets`

        return datasets.Dataset(pq.read_table(path))
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
