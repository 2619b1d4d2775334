"""Prompt datasets from any source, and the tokenizer glue around generation.

`load_prompt_dataset` turns the built-in task, a local .jsonl/.parquet file or a
`datasets.Dataset` into one uniform `datasets.Dataset` with the columns `prompt`
(text, or chat message lists) and `ground_truth`, plus `data_source` / `extra_info`
when the source has them (verl's layout), validated row by row so that a bad row
fails at load time with its row number, not deep inside a rollout.

`render_prompts` gives the text the model reads (the chat template applied, or not:
`uses_chat_template`); `encode_split` renders and tokenizes a whole split once and checks
every row against `data.max_prompt_len`; `encode_prompts` LEFT-pads (the layout
`rlkit.batch.Batch` expects: the last prompt token of every row at column P-1, where
generation continues); `decode_responses` gives back the text and EOS flag the reward
functions take.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from rlkit.data.tasks import builtin_tasks, get_task

BUILTIN_TASKS = tuple(builtin_tasks())  # "arithmetic", "chat_sums": see rlkit.data.tasks
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
    """Load prompts as a `datasets.Dataset` with the columns `prompt` and `ground_truth` (str).

    `prompt` is a string column, or, when any row's prompt is a chat message list
    (`[{"role": "system"|"user"|"assistant", "content": str}, ...]`, verl's and TRL's
    conversational layout), a column of message lists in which a text row becomes one user
    message. Two optional columns follow the source's own: `data_source` (str, None where a
    jsonl row lacks it) and `extra_info` (the row's dict as JSON text, "{}" where absent).

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
    prompt_key / answer_key: the source's column names, or dotted paths into dict columns
    ("reward_model.ground_truth"); `answer_key=None` for prompts without a reference answer
    (reward-model tasks): ground_truth is "". The default answer_key "ground_truth" falls back
    to verl's "reward_model.ground_truth" when the source has no `ground_truth` column.
    num_rows: keep the first `num_rows` rows (files and datasets too).

    Raises FileNotFoundError (missing file), KeyError naming the missing column (or dotted
    key) and the source's columns, ValueError for a source with no rows and naming the first
    bad row (an empty prompt, one that is neither text nor a message list, a malformed message,
    a ground truth that is not a string or an integer, an `extra_info` that is not a dict).
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
    Rows read from a source carry a `source_row` column (their row in the file or split), which
    errors about a split's row name.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    n = num_rows if num_rows is not None else (data.train_size if split == "train" else data.eval_size)
    if data.source in BUILTIN_TASKS:
        task_kwargs = get_task(data.source).kwargs_from_data(data)
        return load_prompt_dataset(data.source, split=split, num_rows=n, task_kwargs=task_kwargs)

    raw, where = _open_source(data.source)
    if isinstance(raw, datasets.DatasetDict):
        names = ["train"] if split == "train" else [s for s in ("eval", "validation", "test") if s in raw]
        name = names[0] if names else split
        table = _pick_split(raw, name, where)
        return _with_source_rows(_validate(table, f"split {name!r} of {where}", data.prompt_key, data.answer_key, n))

    table = _with_source_rows(_validate(raw, where, data.prompt_key, data.answer_key, None)).shuffle(seed=data.seed)
    held_out = min(data.eval_size, len(table))
    rows = range(held_out) if split == "eval" else range(held_out, len(table))
    if split == "train" and len(rows) == 0:
        raise ValueError(
            f"{where} has {len(table)} rows and data.eval_size={data.eval_size} holds them all out: "
            "none left to train on"
        )
    return table.select(list(rows)[:n])


def _with_source_rows(table: datasets.Dataset) -> datasets.Dataset:
    return table.add_column("source_row", list(range(len(table))))


def _validate(
    raw: datasets.Dataset | list[_Record], where: str, prompt_key: str, answer_key: str | None, num_rows: int | None
) -> datasets.Dataset:
    """Check the columns and every row of a table (or json records) -> the uniform Dataset of `load_prompt_dataset`."""
    records = raw if isinstance(raw, list) else None
    if len(raw) == 0:
        raise ValueError(f"data.source {where} has no rows")
    # jsonl: one dict per line, keys may differ between rows; a table: whole columns
    names = sorted({k for r in records for k in r}) if records is not None else list(raw.column_names)
    if answer_key == "ground_truth" and "ground_truth" not in names and "reward_model" in names:
        answer_key = VERL_ANSWER_KEY
    prompt_at = _resolve_key(prompt_key, "prompt_key", names, where)
    answer_at = _resolve_key(answer_key, "answer_key", names, where) if answer_key is not None else None
    if records is None:
        table = raw if num_rows is None else raw.select(range(min(num_rows, len(raw))))
        size = len(table)
        column = lambda name: list(table[name]) if name in names else [None] * size  # noqa: E731
    else:
        records = records if num_rows is None else records[:num_rows]
        size = len(records)
        column = lambda name: [r.get(name) for r in records]  # noqa: E731
        for i, record in enumerate(records):
            for at in (prompt_at, answer_at):
                if at is not None and at[0] not in record:
                    raise ValueError(
                        f"{_row(i, records)} of {where} has no {at[0]!r} field (its fields: {sorted(record)})"
                    )

    row = lambda i: f"{_row(i, records)} of {where}"  # noqa: E731
    prompts = [_check_prompt(_dig(v, prompt_at, row(i)), row(i), prompt_key) for i, v in enumerate(column(prompt_at[0]))]
    if answer_at is None:
        answers = [""] * size
    else:
        answers = [_check_answer(_dig(v, answer_at, row(i)), row(i), answer_key) for i, v in enumerate(column(answer_at[0]))]
    rows: dict[str, list] = {"prompt": _one_prompt_type(prompts), "ground_truth": answers}
    if "data_source" in names:
        rows["data_source"] = [_check_data_source(v, row(i)) for i, v in enumerate(column("data_source"))]
    if "extra_info" in names:
        rows["extra_info"] = [_check_extra_info(v, row(i)) for i, v in enumerate(column("extra_info"))]
    return _to_dataset(rows)


def _load_builtin(name: str, split: str, num_rows: int | None, task_kwargs: dict[str, Any]) -> datasets.Dataset:
    if split not in DEFAULT_TASK_ROWS:
        raise ValueError(f"built-in task {name!r} has splits {sorted(DEFAULT_TASK_ROWS)}, got split={split!r}")
    spec = get_task(name)
    task = spec.make(task_kwargs)
    problems = task.problems(spec.default_rows[split] if num_rows is None else num_rows, split)
    columns = {"prompt": [p["prompt"] for p in problems], "ground_truth": [p["ground_truth"] for p in problems]}
    if problems and "extra_info" in problems[0]:  # as JSON text, like a file's extra_info column
        columns["extra_info"] = [_check_extra_info(p["extra_info"], f"{name} row {i}") for i, p in enumerate(problems)]
    return _to_dataset(columns)


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


# verl's parquet layout keeps the answer in a dict column: {"ground_truth": ..., "style": "rule"}.
VERL_ANSWER_KEY = "reward_model.ground_truth"


def _resolve_key(key: str, role: str, names: Sequence[str], where: str) -> tuple[str, tuple[str, ...]]:
    """A column name or dotted path -> (column, keys inside its dict values); KeyError when no column matches.

    A column whose own name contains dots wins over a path: the longest column-name prefix is taken.
    """
    parts = key.split(".")
    for cut in range(len(parts), 0, -1):
        if ".".join(parts[:cut]) in names:
            return ".".join(parts[:cut]), tuple(parts[cut:])
    raise KeyError(f"column {key!r} (data.{role}) not found in {where}; its columns are {list(names)}")


def _dig(value: Any, at: tuple[str, tuple[str, ...]], row: str) -> Any:
    """The value at the dotted path `at` inside one row's column value; errors name the full dotted key."""
    column, path = at
    for depth, key in enumerate(path):
        here = ".".join((column, *path[:depth]))
        if not isinstance(value, dict):
            raise ValueError(
                f"{row}: {here!r} is a {type(value).__name__}, not a dict: cannot read "
                f"{'.'.join((column, *path))!r}"
            )
        if key not in value:
            raise ValueError(
                f"{row}: {here!r} has no key {key!r} (for {'.'.join((column, *path))!r}; its keys: {sorted(value)})"
            )
        value = value[key]
    return value


class _Record(dict):
    """One json line, remembering its line number for error messages."""

    def __init__(self, data: dict, line_no: int):
        super().__init__(data)
        self.line_no = line_no


def _row(i: int, records: list[_Record] | None) -> str:
    """'row 3' or, for json lines, 'row 3 (line 5)': blank lines make the two differ."""
    return f"row {i}" if records is None else f"row {i} (line {records[i].line_no})"


CHAT_ROLES = ("system", "user", "assistant")
_MESSAGE_SHAPE = '[{"role": "user", "content": "..."}, ...]'


def _check_prompt(value: Any, row: str, key: str) -> str | list[dict[str, str]]:
    """A non-empty text, or a chat message list normalised to [{"role", "content"}, ...]."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{row}: column {key!r} is empty")
        return value
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(
            f"{row}: column {key!r} must be a string, got {type(value).__name__} {value!r:.80} "
            f"(or a chat message list {_MESSAGE_SHAPE})"
        )
    messages = []
    for j, message in enumerate(value):
        what = f"{row}: column {key!r} message {j}"
        if not isinstance(message, dict):
            raise ValueError(
                f"{what} must be a dict {{'role': ..., 'content': ...}}, got {type(message).__name__} "
                f"{message!r:.80} (a chat message list is {_MESSAGE_SHAPE})"
            )
        for field in ("role", "content"):
            if field not in message:
                raise ValueError(f"{what} has no {field!r} (its keys: {sorted(message)})")
        if message["role"] not in CHAT_ROLES:
            raise ValueError(f"{what} has role {message['role']!r}; a role is one of {', '.join(CHAT_ROLES)}")
        if not isinstance(message["content"], str):
            raise ValueError(f"{what}: 'content' must be a string, got {type(message['content']).__name__}")
        messages.append({"role": message["role"], "content": message["content"]})
    if not any(m["content"].strip() for m in messages):
        raise ValueError(f"{row}: column {key!r} is a message list whose messages are all empty")
    return messages


def _one_prompt_type(prompts: list) -> list:
    """One Arrow column holds one type: with any message list, text prompts become one user message each."""
    if all(isinstance(p, str) for p in prompts):
        return prompts
    return [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]


def _check_answer(value: Any, row: str, key: str | None) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # jsonl files often store numeric answers as numbers
    raise ValueError(
        f"{row}: column {key!r} must be a string or an integer, got {type(value).__name__} {value!r:.80}"
    )


def _check_data_source(value: Any, row: str) -> str | None:
    if value is None or isinstance(value, str):
        return value  # None: not given, the Batch gets data.source
    raise ValueError(f"{row}: column 'data_source' must be a string, got {type(value).__name__} {value!r:.80}")


def _check_extra_info(value: Any, row: str) -> str:
    """A row's extra_info dict as JSON text (Arrow would merge the keys of all rows' dicts); None -> "{}"."""
    if value is None:
        return "{}"
    if not isinstance(value, dict):
        raise ValueError(f"{row}: column 'extra_info' must be a dict, got {type(value).__name__} {value!r:.80}")
    try:
        return json.dumps(value)
    except TypeError as err:
        raise ValueError(f"{row}: column 'extra_info' must hold JSON values (str, numbers, lists, dicts): {err}") from err


_MESSAGES = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})


def _to_dataset(rows: dict[str, list]) -> datasets.Dataset:
    """The uniform Dataset: `prompt` text or message lists, `ground_truth`, and the optional string columns."""
    is_chat = any(not isinstance(p, str) for p in rows["prompt"])
    features = datasets.Features(
        {name: _MESSAGES if name == "prompt" and is_chat else datasets.Value("string") for name in rows}
    )
    return datasets.Dataset.from_dict(rows, features=features)


def batch_lists(table: datasets.Dataset, data: Any) -> dict[str, list]:
    """The per-row lists of a Batch from rows of the uniform Dataset: ground_truth, data_source, extra_info.

    data_source defaults to `data.source` and extra_info to {} for rows (or sources) without them.
    """
    size = len(table)
    sources = list(table["data_source"]) if "data_source" in table.column_names else [None] * size
    infos = list(table["extra_info"]) if "extra_info" in table.column_names else ["{}"] * size
    return {
        "ground_truth": list(table["ground_truth"]),
        "data_source": [s if s is not None else str(data.source) for s in sources],
        "extra_info": [json.loads(i) for i in infos],
    }


# --- tokenizer glue ---


Prompt = str | list  # a text, or a chat message list [{"role": ..., "content": ...}, ...]


def uses_chat_template(prompt: Prompt, setting: bool | str, system_prompt: str | None = None) -> bool:
    """Whether `prompt` goes through the chat template under `data.use_chat_template` = `setting`.

    True / False are taken as they are; "auto" templates message lists, and text when a system prompt is set.
    """
    if setting == "auto":
        return isinstance(prompt, list) or system_prompt is not None
    if setting is True or setting is False:
        return setting
    raise ValueError(f'chat_template must be True, False or "auto", got {setting!r}')


def render_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    *,
    chat_template: bool | str = False,
    system_prompt: str | None = None,
    what: str = "prompt",
) -> tuple[list[str], list[bool]]:
    """The text the model reads for each prompt -> (texts, templated: whether the chat template made it).

    Templated prompts are the messages (a text prompt = one user message; `system_prompt` first
    unless the messages start with their own system message) through the tokenizer's chat
    template with the generation prompt. `what` names a prompt in errors ("train row" -> "train row 3").
    """
    texts, templated = [], []
    for i, prompt in enumerate(prompts):
        use = uses_chat_template(prompt, chat_template, system_prompt)
        if not use:
            if not isinstance(prompt, str):
                raise ValueError(
                    f"{what} {i} is a chat message list but data.use_chat_template = {chat_template!r}: "
                    'set data.use_chat_template to "auto" or true (message lists need the chat template)'
                )
            if system_prompt is not None:
                raise ValueError("data.system_prompt is set but data.use_chat_template = false: it needs the template")
            texts.append(prompt)
        else:
            if getattr(tokenizer, "chat_template", None) is None:
                raise ValueError(
                    f"{what} {i} needs the chat template (data.use_chat_template = {chat_template!r}) but the "
                    "tokenizer has none: set model.tokenizer_path to a tokenizer with one, or use text prompts "
                    "with data.use_chat_template = false"
                )
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            if system_prompt is not None and messages[0]["role"] != "system":
                messages = [{"role": "system", "content": system_prompt}, *messages]
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        templated.append(use)
    return texts, templated


def tokenize_rendered(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], templated: Sequence[bool]) -> list[list[int]]:
    """Token ids of rendered prompts, in two batched calls: a chat template writes its own BOS and
    special tokens, so templated texts get none added; plain texts get the tokenizer's defaults."""
    out: list[list[int]] = [[] for _ in texts]
    for flag in (True, False):
        index = [i for i, t in enumerate(templated) if bool(t) == flag]
        if index:
            encoded = tokenizer([texts[i] for i in index], add_special_tokens=not flag)["input_ids"]
            for i, ids in zip(index, encoded):
                out[i] = list(ids)
    return out


def encode_split(tokenizer: PreTrainedTokenizerBase, table: datasets.Dataset, data: Any, split: str) -> tuple[list[str], list[list[int]]]:
    """Render and tokenize every prompt of a split once -> (texts the model reads, token ids per row).

    Reads `data.use_chat_template, system_prompt, max_prompt_len`. Raises ValueError naming the row and
    `data.max_prompt_len` for the first prompt longer than that (fast: one batched tokenizer call).
    """
    texts, templated = render_prompts(
        tokenizer, list(table["prompt"]), chat_template=data.use_chat_template,
        system_prompt=data.system_prompt, what=f"{split} row",
    )
    ids = tokenize_rendered(tokenizer, texts, templated)
    source_rows = table["source_row"] if "source_row" in table.column_names else None
    for i, row in enumerate(ids):
        if 0 < len(row) <= data.max_prompt_len:
            continue
        name = f"{split} row {i}" + (f" (row {source_rows[i]} of data.source)" if source_rows is not None else "")
        if not row:
            raise ValueError(f"{name} ({texts[i]!r:.80}) encodes to no tokens")
        after = " (after the chat template)" if templated[i] else ""
        raise ValueError(
            f"data.max_prompt_len = {data.max_prompt_len} but {name} has a {len(row)}-token prompt{after}: "
            f"raise data.max_prompt_len or shorten the prompt ({texts[i]!r:.120})"
        )
    return texts, ids


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (prompt_ids (B, P) long, prompt_mask (B, P) long), LEFT-padded to the longest."""
    width = max(len(ids) for ids in rows)
    prompt_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, P)
    prompt_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, P)
    for i, ids in enumerate(rows):
        prompt_ids[i, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
        prompt_mask[i, width - len(ids) :] = 1
    return prompt_ids, prompt_mask


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id prompts are left-padded with: the pad token, else EOS."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("tokenizer has neither a pad nor an eos token to left-pad prompts with")
    return pad_id


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    max_len: int,
    *,
    chat_template: bool | str = False,
    system_prompt: str | None = None,
    truncation: str = "error",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize prompts LEFT-padded to the longest one -> (prompt_ids (B, P) long, prompt_mask (B, P) long).

    prompts: texts or chat message lists. chat_template / system_prompt: as `data.use_chat_template` /
      `data.system_prompt` (`render_prompts`): True wraps a text as one user message and applies the
      tokenizer's chat template with the generation prompt (the template adds its own BOS, so no other
      special tokens are added); False encodes the text with the tokenizer's default special tokens;
      "auto" templates message lists (and texts when a system prompt is given).
    truncation: "error" (default) raises naming the row when a prompt is longer than
      `max_len` tokens; "left" keeps its last `max_len` tokens (the end of
      a prompt is what the answer depends on).
    """
    if truncation not in ("error", "left"):
        raise ValueError(f"truncation must be 'error' or 'left', got {truncation!r}")
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    if len(prompts) == 0:
        raise ValueError("encode_prompts got no prompts")
    pad_id = pad_token_id(tokenizer)
    texts, templated = render_prompts(tokenizer, prompts, chat_template=chat_template, system_prompt=system_prompt)
    encoded = tokenize_rendered(tokenizer, texts, templated)

    rows = []
    for i, ids in enumerate(encoded):
        if len(ids) == 0:
            raise ValueError(f"prompt {i} ({texts[i]!r:.80}) encodes to no tokens")
        if len(ids) > max_len:
            if truncation == "error":
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens, more than max_len={max_len} "
                    f"({texts[i]!r:.80}); raise the max prompt length or pass truncation='left'"
                )
            ids = ids[-max_len:]
        rows.append(ids)
    return left_pad(rows, pad_id)


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
