"""Tokenizer, arithmetic task, rule reward/cost, prompt loader, prompt encoding and response decoding."""

from __future__ import annotations

import json

import datasets
import pytest
import torch

from rlkit.data.arithmetic import ArithmeticTask, arithmetic_cost, arithmetic_reward, score_texts, solve
from rlkit.data.datasets import decode_responses, encode_prompts, load_prompt_dataset, load_prompt_split
from rlkit.data.tokenizer import CHARACTERS, SPECIAL_TOKENS, build_char_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


# --- tokenizer ---


def test_char_tokenizer_one_token_per_character(tok):
    assert len(tok) == len(SPECIAL_TOKENS) + len(CHARACTERS) == 103
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    # "3" and "7" are adjacent characters, so adjacent ids; every char is one token, no BOS/EOS added
    ids = tok("37+48=85")["input_ids"]
    assert len(ids) == 8 and ids[1] == ids[0] + 4
    assert ids[0] == tok.convert_tokens_to_ids("3")
    text = "Hello, World! 12*3-4 = {x}\n~"
    assert len(tok(text)["input_ids"]) == len(text)
    assert tok.decode(tok(text)["input_ids"]) == text


def test_char_tokenizer_special_tokens_and_chat_template(tok):
    # a special token written in text is one token, and decode(skip_special_tokens) drops it
    ids = tok("85<|eos|>")["input_ids"]
    assert ids[-1] == tok.eos_token_id and len(ids) == 3
    assert tok.decode(ids, skip_special_tokens=True) == "85"
    # characters outside the vocabulary are dropped (documented), not mapped to garbage ids
    assert tok.decode(tok("é1")["input_ids"]) == "1"
    chat = [{"role": "user", "content": "1+2="}, {"role": "assistant", "content": "3"}]
    assert tok.apply_chat_template(chat, tokenize=False) == "<|user|>1+2=<|assistant|>3<|eos|>"
    assert tok.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True) == "<|user|>1+2=<|assistant|>"


def test_char_tokenizer_is_deterministic():
    a, b = build_char_tokenizer(), build_char_tokenizer()
    assert a.get_vocab() == b.get_vocab()


# --- arithmetic task ---


def test_problems_are_correct_and_shaped_by_digits():
    for digits, ops in ((1, ("+",)), (2, ("+", "-", "*")), (3, ("*",))):
        task = ArithmeticTask(digits=digits, operators=ops, seed=3)
        for p in task.problems(20, "train"):
            a, op, b = _parse(p["prompt"])
            assert op in ops and p["prompt"].endswith("=")
            assert len(str(a)) == len(str(b)) == digits
            assert p["ground_truth"] == str({"+": a + b, "-": a - b, "*": a * b}[op])
            if op == "-":
                assert a >= b  # allow_negative=False: the larger operand comes first
    assert solve(3, "-", 5) == -2
    negative = ArithmeticTask(digits=2, operators=("-",), allow_negative=True).problems(200)
    assert any(p["ground_truth"].startswith("-") for p in negative)


def _parse(prompt: str) -> tuple[int, str, int]:
    body = prompt[:-1]
    for i, ch in enumerate(body):
        if i > 0 and ch in "+-*":
            return int(body[:i]), ch, int(body[i + 1 :])
    raise AssertionError(prompt)


def test_splits_disjoint_and_cover_the_space():
    task = ArithmeticTask(digits=2, operators=("+", "-"), seed=0)
    train = {p["prompt"] for p in task.problems(len(task._enumerate("train")), "train")}
    evals = {p["prompt"] for p in task.problems(len(task._enumerate("eval")), "eval")}
    assert not train & evals
    # "+" has 90*90 problems, "-" (larger operand first) 90*91/2
    assert len(train) + len(evals) == 90 * 90 + 90 * 91 // 2
    assert 0.08 < len(evals) / (len(train) + len(evals)) < 0.12  # eval_fraction = 0.1


def test_splits_deterministic_per_seed_and_differ_across_seeds():
    a = ArithmeticTask(seed=1).problems(64, "eval")
    assert a == ArithmeticTask(seed=1).problems(64, "eval")
    assert a[:10] == ArithmeticTask(seed=1).problems(10, "eval")  # growing an eval set keeps its prompts
    assert len({p["prompt"] for p in a}) == 64
    assert {p["prompt"] for p in a} != {p["prompt"] for p in ArithmeticTask(seed=2).problems(64, "eval")}


def test_large_space_uses_sampling_and_stays_disjoint():
    task = ArithmeticTask(digits=4, operators=("+", "*"), seed=5)
    train, evals = task.problems(300, "train"), task.problems(100, "eval")
    assert train == task.problems(300, "train")
    assert len({p["prompt"] for p in train}) == 300
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in evals}
    assert all(task.is_eval(*_parse(p["prompt"])) for p in evals)
    assert not any(task.is_eval(*_parse(p["prompt"])) for p in train)


def test_task_errors():
    with pytest.raises(ValueError, match="only .* eval problems"):
        ArithmeticTask(digits=1).problems(64, "eval")  # ~10 of 100 problems are eval
    with pytest.raises(ValueError, match="operators"):
        ArithmeticTask(operators=("/",))
    with pytest.raises(ValueError, match="digits"):
        ArithmeticTask(digits=0)
    with pytest.raises(ValueError, match="split"):
        ArithmeticTask().problems(3, "test")


# --- reward and cost ---


@pytest.mark.parametrize(
    "text, eos, expected",
    [
        ("85", True, 1.0),  # exactly the answer, then EOS
        (" 85 ", True, 1.0),  # surrounding whitespace is forgiven
        ("85", False, 0.0),  # truncated / never stopped: no credit
        ("86", True, 0.0),  # wrong
        ("8", True, 0.0),  # prefix of the answer
        ("850", True, 0.0),  # answer plus a digit
        ("085", True, 0.0),
        ("8 5", True, 0.0),
        ("85!", True, 0.0),  # junk after the answer
        ("x85", True, 0.0),
        ("", True, 0.0),  # empty response
        ("", False, 0.0),
        ("85\n85", True, 0.0),
    ],
)
def test_arithmetic_reward(text, eos, expected):
    assert arithmetic_reward(text, "85", eos) == expected


def test_arithmetic_reward_negative_answer():
    assert arithmetic_reward("-11", "-11", True) == 1.0
    assert arithmetic_reward("11", "-11", True) == 0.0


def test_arithmetic_cost():
    assert arithmetic_cost("85", "85", True) == 0.0
    assert arithmetic_cost("37", "37", True) == 1.0  # correct AND forbidden digit: reward and cost conflict
    assert arithmetic_cost("37", "37", True, forbidden_digit=None) == 0.0
    assert arithmetic_cost("8555", "85", True) == 0.0  # answer + 2 extra chars is within budget
    assert arithmetic_cost("85555", "85", True) == 1.0  # + 3: rambling
    assert arithmetic_cost("85", "85", False) == 1.0  # never stopped
    assert arithmetic_cost("", "85", True) == 0.0  # an empty answer is safe (and earns no reward)


def test_score_texts_batches_a_rule():
    scores = score_texts(arithmetic_reward, ["85", "85", "1"], ["85", "85", "1"], torch.tensor([True, False, True]))
    assert scores.dtype == torch.float32 and scores.tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="must be equal"):
        score_texts(arithmetic_reward, ["85"], ["85", "1"], [True])


# --- loader ---

ROWS = [{"question": "1+2=", "answer": "3"}, {"question": "10+20=", "answer": "30"}]


def _write_jsonl(path, rows, blank_line_after_first=False):
    lines = [json.dumps(r) for r in rows]
    if blank_line_after_first:
        lines.insert(1, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_jsonl_parquet_and_dataset_agree(tmp_path):
    jsonl = _write_jsonl(tmp_path / "p.jsonl", ROWS)
    parquet = tmp_path / "p.parquet"
    datasets.Dataset.from_list(ROWS).to_parquet(str(parquet))
    expected = {"prompt": ["1+2=", "10+20="], "ground_truth": ["3", "30"]}
    for source in (jsonl, str(parquet), datasets.Dataset.from_list(ROWS)):
        ds = load_prompt_dataset(source, prompt_key="question", answer_key="answer")
        assert ds.column_names == ["prompt", "ground_truth"]
        assert ds.to_dict() == expected
    dd = datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS)})
    assert load_prompt_dataset(dd, "question", "answer", split="test").to_dict() == expected
    with pytest.raises(KeyError, match="splits"):
        load_prompt_dataset(dd, "question", "answer", split="train")


def test_load_options(tmp_path):
    rows = [{"prompt": "a", "ground_truth": 7}, {"prompt": "b", "ground_truth": "8"}, {"prompt": "c", "ground_truth": "9"}]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    assert load_prompt_dataset(path)["ground_truth"] == ["7", "8", "9"]  # integer answers become strings
    assert load_prompt_dataset(path, num_rows=2)["prompt"] == ["a", "b"]
    assert load_prompt_dataset(path, answer_key=None)["ground_truth"] == ["", "", ""]


def test_load_builtin_arithmetic():
    train = load_prompt_dataset("arithmetic", split="train", num_rows=500, task_kwargs={"digits": 2, "seed": 4})
    evals = load_prompt_dataset("arithmetic", split="eval", task_kwargs={"digits": 2, "seed": 4})
    assert len(train) == 500 and len(evals) == 64
    assert not set(train["prompt"]) & set(evals["prompt"])
    assert evals["prompt"] == [p["prompt"] for p in ArithmeticTask(digits=2, seed=4).problems(64, "eval")]
    with pytest.raises(ValueError, match="splits"):
        load_prompt_dataset("arithmetic", split="validation")


def test_missing_column_names_column_and_file(tmp_path):
    path = _write_jsonl(tmp_path / "no_answer.jsonl", [{"question": "1+2="}])
    with pytest.raises(KeyError, match=r"'answer'.*no_answer\.jsonl"):
        load_prompt_dataset(path, prompt_key="question", answer_key="answer")
    parquet = tmp_path / "q.parquet"
    datasets.Dataset.from_list([{"question": "1+2="}]).to_parquet(str(parquet))
    with pytest.raises(KeyError, match=r"'prompt'.*q\.parquet"):
        load_prompt_dataset(parquet)
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_prompt_dataset(tmp_path / "nowhere.jsonl")
    with pytest.raises(ValueError, match="unsupported extension"):
        load_prompt_dataset(_write_jsonl(tmp_path / "p.csv", ROWS))


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ({"prompt": 12, "ground_truth": "1"}, r"row 1 \(line 3\) of file .*bad\.jsonl.*'prompt' must be a string, got int"),
        ({"prompt": "   ", "ground_truth": "1"}, r"row 1 \(line 3\) .*'prompt' is empty"),
        ({"prompt": "1+1=", "ground_truth": [2]}, r"row 1 \(line 3\) .*'ground_truth' must be a string or an integer"),
        ({"prompt": "1+1="}, r"row 1 \(line 3\) .*has no 'ground_truth' field"),
    ],
)
def test_bad_row_is_named(tmp_path, bad_row, message):
    # a blank line after the first row: the error must give both the row and the file line
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "1+2=", "ground_truth": "3"}, bad_row], True)
    with pytest.raises(ValueError, match=message):
        load_prompt_dataset(path)


def test_bad_row_in_dataset_and_bad_json(tmp_path):
    ds = datasets.Dataset.from_list([{"prompt": "1+2=", "ground_truth": "3"}, {"prompt": "", "ground_truth": "3"}])
    with pytest.raises(ValueError, match="row 1 of the given Dataset: column 'prompt' is empty"):
        load_prompt_dataset(ds)
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "1+2=", "ground_truth": "3"}\n{"prompt": oops}\n')
    with pytest.raises(ValueError, match=r"line 2 of file .*broken\.jsonl.* not valid JSON"):
        load_prompt_dataset(path)


def _data_cfg(**fields):
    from rlkit.config import Config

    return Config().override({f"data.{k}": v for k, v in fields.items()}).data


def test_load_prompt_split_builtin_task_follows_config():
    data = _data_cfg(digits=2, operators="+-", seed=9, train_size=300, eval_size=40)
    train, evals = load_prompt_split(data, "train"), load_prompt_split(data, "eval")
    assert (len(train), len(evals)) == (300, 40)
    assert not set(train["prompt"]) & set(evals["prompt"])
    assert {p[2] for p in train["prompt"]} == {"+", "-"}
    assert evals["prompt"] == [p["prompt"] for p in ArithmeticTask(2, ("+", "-"), seed=9).problems(40, "eval")]
    assert len(load_prompt_split(data, "eval", num_rows=5)) == 5


def test_load_prompt_split_holds_out_rows_of_one_file(tmp_path):
    rows = [{"prompt": f"{i}+0=", "ground_truth": str(i)} for i in range(20)]
    path = _write_jsonl(tmp_path / "all.jsonl", rows)
    data = _data_cfg(source=str(path), eval_size=6, train_size=100, seed=1)
    train, evals = load_prompt_split(data, "train"), load_prompt_split(data, "eval")
    assert (len(train), len(evals)) == (14, 6)
    assert sorted(list(train["prompt"]) + list(evals["prompt"])) == sorted(r["prompt"] for r in rows)
    assert load_prompt_split(data, "eval")["prompt"] == evals["prompt"]  # seeded: the same held-out rows
    assert evals["prompt"] != [r["prompt"] for r in rows[:6]]  # shuffled, not the file's head
    with pytest.raises(ValueError, match="eval_size=20 holds them all out"):
        load_prompt_split(_data_cfg(source=str(path), eval_size=20), "train")


def test_dataset_folders_and_named_splits(tmp_path):
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "validation": datasets.Dataset.from_list(ROWS[:1])}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "single"))
    data = _data_cfg(source=str(tmp_path / "dd"), prompt_key="question", answer_key="answer")
    assert load_prompt_split(data, "train")["prompt"] == ["1+2=", "10+20="]
    assert load_prompt_split(data, "eval")["prompt"] == ["1+2="]  # "eval" falls back to "validation"
    assert len(load_prompt_dataset(tmp_path / "single", "question", "answer")) == 2
    with pytest.raises(KeyError, match=r"folder .*dd.* has splits \['train', 'validation'\]"):
        load_prompt_dataset(tmp_path / "dd", "question", "answer", split="test")


# --- encode / decode ---


def test_encode_prompts_left_pads(tok):
    ids, mask = encode_prompts(tok, ["1+2=", "37+48="], max_len=16)
    assert ids.shape == mask.shape == (2, 6) and ids.dtype == torch.long
    c = tok.convert_tokens_to_ids
    pad = tok.pad_token_id
    assert ids.tolist() == [
        [pad, pad, c("1"), c("+"), c("2"), c("=")],
        [c("3"), c("7"), c("+"), c("4"), c("8"), c("=")],
    ]
    assert mask.tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]


def test_encode_prompts_chat_template_and_truncation(tok):
    ids, mask = encode_prompts(tok, ["1+2="], max_len=16, chat_template=True)
    assert tok.decode(ids[0]) == "<|user|>1+2=<|assistant|>" and mask.all()
    with pytest.raises(ValueError, match="prompt 1 has 6 tokens, more than max_len=5"):
        encode_prompts(tok, ["1+2=", "37+48="], max_len=5)
    ids, mask = encode_prompts(tok, ["1+2=", "37+48="], max_len=5, truncation="left")
    assert tok.decode(ids[1]) == "7+48=" and ids.shape == (2, 5)


def test_decode_responses_cuts_at_first_eos(tok):
    c, eos, pad = tok.convert_tokens_to_ids, tok.eos_token_id, tok.pad_token_id
    response_ids = torch.tensor(
        [
            [c("8"), c("5"), eos, pad, pad],  # finished
            [c("8"), c("5"), c("5"), c("5"), c("5")],  # hit the length limit
            [eos, c("8"), c("5"), eos, pad],  # empty answer; tokens after the first EOS ignored
            [c("1"), c("2"), c("3"), eos, pad],  # EOS under the mask's padding does not count
        ]
    )
    response_mask = torch.tensor([[1, 1, 1, 0, 0], [1] * 5, [1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    texts, eos_seen = decode_responses(tok, response_ids, response_mask)
    assert texts == ["85", "85555", "", "12"]
    assert eos_seen.tolist() == [True, False, True, False]
    rewards = score_texts(arithmetic_reward, texts, ["85", "85555", "85", "12"], eos_seen)
    assert rewards.tolist() == [1.0, 0.0, 0.0, 0.0]
