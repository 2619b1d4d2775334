"""Tests for rlkit.batch.Batch: row movement (split/pad/unpad/concat/select), strings, save/load, errors."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch

from rlkit.batch import ALL_FIELDS, TEXT_FIELDS, Batch


def make_batch(size: int = 7, prompt_len: int = 3, resp_len: int = 4) -> Batch:
    """Row r holds values derived from r, so every row is recognisable after moving around."""
    rows = torch.arange(size)
    prompt_ids = rows[:, None] * 100 + torch.arange(prompt_len)  # (B, P)
    response_ids = rows[:, None] * 100 + 50 + torch.arange(resp_len)  # (B, T)
    response_mask = torch.ones(size, resp_len, dtype=torch.long)
    response_mask[:, -1] = rows % 2  # odd rows use all T tokens, even rows T-1
    batch = Batch.from_prompts(
        prompt_ids,
        torch.ones(size, prompt_len, dtype=torch.long),
        prompt_text=[f"prompt {r}" for r in range(size)],
        ground_truth=[str(r) for r in range(size)],
    )
    return batch.replace(
        response_ids=response_ids,
        response_mask=response_mask,
        old_logprobs=-rows[:, None].float().expand(size, resp_len) / 10,
        values=rows[:, None].float() + torch.zeros(size, resp_len),
        scores=rows.float(),
        group_id=rows // 2,
        response_text=[f"response {r}" for r in range(size)],
    )


def assert_same(a: Batch, b: Batch) -> None:
    """Field-by-field equality: same fields set, equal tensors (and dtypes), equal string lists."""
    assert len(a) == len(b)
    assert a.present_fields() == b.present_fields()
    for name in a.present_fields():
        x, y = getattr(a, name), getattr(b, name)
        if name in TEXT_FIELDS:
            assert list(x) == list(y), name
        else:
            assert x.dtype == y.dtype, name
            assert torch.equal(x, y), name


def row_ids(batch: Batch) -> list[int]:
    """Which original row each row came from (prompt_ids[:, 0] == 100 * row)."""
    return (batch.prompt_ids[:, 0] // 100).tolist()


# ----------------------------------------------------------------- construction


def test_from_prompts_sets_only_prompt_fields():
    ids = torch.tensor([[0, 5, 6], [7, 8, 9]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    batch = Batch.from_prompts(ids, mask, prompt_text=["a", "b"], ground_truth=[1, None])
    assert len(batch) == 2
    assert batch.present_fields() == ["prompt_ids", "prompt_mask", "prompt_text", "ground_truth"]
    assert batch.response_ids is None and batch.values is None and batch.response_text is None
    assert list(batch.ground_truth) == [1, None]
    assert batch.num_tokens() == 5


def test_from_prompts_errors_name_the_argument():
    ids = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="prompt_mask must have the shape"):
        Batch.from_prompts(ids, torch.ones(2, 4))
    with pytest.raises(ValueError, match="prompt_text has 3 entries but prompt_ids has 2 rows"):
        Batch.from_prompts(ids, torch.ones(2, 3), prompt_text=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"prompt_ids must be a \(B, P\) tensor"):
        Batch.from_prompts(torch.zeros(3, dtype=torch.long), torch.ones(3))
    with pytest.raises(TypeError, match="prompt_ids must hold integers"):
        Batch.from_prompts(torch.zeros(2, 3), torch.ones(2, 3))


def test_validate_names_the_bad_field():
    batch = make_batch(4)
    with pytest.raises(ValueError, match="Batch.values has response length 5 but Batch.response_ids has 4"):
        batch.replace(values=torch.zeros(4, 5)).validate()
    with pytest.raises(ValueError, match=r"Batch.scores must have shape \(B,\) with B=4, got \(4, 1\)"):
        batch.replace(scores=torch.zeros(4, 1)).validate()
    with pytest.raises(TypeError, match="group_id must be torch.long"):
        batch.replace(group_id=torch.zeros(4, dtype=torch.int32)).validate()


def test_num_tokens_hand_counted():
    batch = make_batch(7)  # prompt: 7 * 3 = 21; response: 7 * 3 + 3 odd rows = 24
    assert batch.num_tokens() == 21 + 24
    no_masks = Batch(prompt_ids=torch.zeros(2, 3, dtype=torch.long), batch_size=[2])
    assert no_masks.num_tokens() == 6  # no mask: all positions count
    assert Batch(batch_size=[3]).num_tokens() == 0


def test_repr_is_compact_and_lists_present_fields():
    text = repr(make_batch(7).replace(values=None))
    assert text.startswith("Batch(B=7, prompt_ids: (7, 3) int64")
    assert "scores: (7,) float32" in text and "prompt_text: [7]" in text
    assert "values" not in text and "costs" not in text
    assert "\n" not in text


def test_replace_is_a_shallow_copy_and_rejects_unknown_fields():
    batch = make_batch(3)
    costs = torch.tensor([1.0, 2.0, 3.0])
    out = batch.replace(costs=costs, prompt_text=["x", "y", "z"])
    assert out.costs is costs  # shared, not copied
    assert batch.costs is None and list(batch.prompt_text) == ["prompt 0", "prompt 1", "prompt 2"]
    assert list(out.prompt_text) == ["x", "y", "z"]
    assert out.response_ids.data_ptr() == batch.response_ids.data_ptr()
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['reward'\]"):
        batch.replace(reward=costs)


def test_every_field_is_declared_once():
    assert len(set(ALL_FIELDS)) == len(ALL_FIELDS) == 24
    # the field-group tables (which drive padding and validation) match the declarations
    assert [f.name for f in dataclasses.fields(Batch)] == list(ALL_FIELDS)
    batch = Batch(batch_size=[1])
    assert batch.present_fields() == []
    # `values` is a field here, not TensorDict's values() method
    assert batch.values is None


# ------------------------------------------------------------------ select


def test_select_keeps_given_order_with_strings_and_repeats():
    batch = make_batch(7)
    out = batch.select([5, 0, 5, 2])
    assert row_ids(out) == [5, 0, 5, 2]
    assert list(out.prompt_text) == ["prompt 5", "prompt 0", "prompt 5", "prompt 2"]
    assert list(out.response_text) == ["response 5", "response 0", "response 5", "response 2"]
    assert list(out.ground_truth) == ["5", "0", "5", "2"]
    assert out.scores.tolist() == [5.0, 0.0, 5.0, 2.0]
    assert out.group_id.tolist() == [2, 0, 2, 1]
    assert out.response_mask[:, -1].tolist() == [1, 0, 1, 0]
    assert out.costs is None


def test_select_copies_tensors_and_accepts_tensor_and_mask():
    batch = make_batch(4)
    out = batch.select(torch.tensor([1, 3]))
    out.scores[0] = -1.0
    assert batch.scores[1] == 1.0  # the parent is untouched
    masked = batch.select(torch.tensor([True, False, False, True]))
    assert row_ids(masked) == [0, 3]
    assert len(batch.select([])) == 0 and list(batch.select([]).prompt_text) == []


def test_select_errors():
    batch = make_batch(4)
    with pytest.raises(IndexError, match="index out of range for a batch of 4 rows"):
        batch.select([0, 4])
    with pytest.raises(IndexError, match="bool mask needs 4 entries, got 3"):
        batch.select(torch.tensor([True, False, True]))
    with pytest.raises(TypeError, match="indices must be integers"):
        batch.select(torch.tensor([0.0, 1.0]))


# ---------------------------------------------------------- pad / split / concat


def test_pad_to_multiple_copies_last_row_with_zero_response_mask():
    batch = make_batch(7)
    padded, pad = batch.pad_to_multiple(4)
    assert pad == 1 and len(padded) == 8
    assert row_ids(padded) == [0, 1, 2, 3, 4, 5, 6, 6]
    assert list(padded.prompt_text)[-1] == "prompt 6"
    assert padded.response_mask[-1].tolist() == [0, 0, 0, 0]
    assert torch.equal(padded.response_mask[:7], batch.response_mask)
    assert batch.response_mask[6].tolist() == [1, 1, 1, 0]  # the source row is not zeroed
    same, zero = batch.pad_to_multiple(7)
    assert zero == 0 and same is batch
    assert padded.unpad(pad).prompt_text == batch.prompt_text
    assert_same(padded.unpad(pad), batch)


def test_pad_without_response_mask_still_pads():
    prompts = Batch.from_prompts(torch.ones(3, 2, dtype=torch.long), torch.ones(3, 2), ["a", "b", "c"])
    padded, pad = prompts.pad_to_multiple(2)
    assert pad == 1 and list(padded.prompt_text) == ["a", "b", "c", "c"]
    assert padded.response_mask is None


# (B, n) -> expected part sizes after padding, and pad count, computed by hand
SPLIT_CASES = [
    (7, 1, [7], 0),
    (7, 2, [4, 4], 1),
    (7, 3, [3, 3, 3], 2),
    (7, 4, [2, 2, 2, 2], 1),
    (7, 7, [1] * 7, 0),
    (7, 10, [1] * 10, 3),  # n > B: every rank gets one row, 3 of them padding
    (8, 4, [2, 2, 2, 2], 0),
    (1, 3, [1, 1, 1], 2),
]


@pytest.mark.parametrize("size,n,sizes,want_pad", SPLIT_CASES)
def test_split_concat_unpad_round_trip(size, n, sizes, want_pad):
    batch = make_batch(size)
    parts, pad = batch.split(n)
    assert pad == want_pad
    assert [len(p) for p in parts] == sizes
    # contiguous parts, padding (copies of the last row) at the end
    flat = [r for p in parts for r in row_ids(p)]
    assert flat == list(range(size)) + [size - 1] * pad
    for part in parts:  # strings travel with their rows
        assert list(part.prompt_text) == [f"prompt {r}" for r in row_ids(part)]
        assert list(part.ground_truth) == [str(r) for r in row_ids(part)]
        assert part.costs is None  # None fields survive
    # the padding rows (the last `pad` of the last parts) carry no loss weight
    all_masks = torch.cat([p.response_mask for p in parts])
    assert all_masks[size:].sum() == 0
    assert_same(Batch.concat(parts).unpad(pad), batch)


def test_split_parts_own_their_memory():
    """A part must not be a view of the whole batch: pickling it (Ray) would ship every row."""
    batch = make_batch(64, resp_len=64)
    parts, _ = batch.split(4)
    whole = len(pickle.dumps(batch))
    assert len(pickle.dumps(parts[0])) < whole / 2
    assert parts[0].values.untyped_storage().nbytes() == 16 * 64 * 4


def test_split_rejects_bad_n():
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        make_batch(3).split(0)
    with pytest.raises(ValueError, match=r"unpad: pad must be an int in \[0, 3\], got 4"):
        make_batch(3).unpad(4)


def test_concat_orders_rows_and_keeps_none_fields():
    a, b = make_batch(5), make_batch(5)
    out = Batch.concat([a.select([4, 1]), b.select([0]), a.select([2, 3])])
    assert row_ids(out) == [4, 1, 0, 2, 3]
    assert list(out.response_text) == ["response 4", "response 1", "response 0", "response 2", "response 3"]
    assert out.costs is None and out.advantages is None
    assert_same(Batch.concat([a]), a)


def test_concat_pads_prompt_left_and_response_right():
    """Ranks generate responses of different lengths; concat aligns them by the layout convention."""
    short = Batch(
        prompt_ids=torch.tensor([[7, 8]]),
        prompt_mask=torch.tensor([[1, 1]]),
        response_ids=torch.tensor([[3]]),
        response_mask=torch.tensor([[1]]),
        old_logprobs=torch.tensor([[-0.5]]),
        batch_size=[1],
    )
    long = Batch(
        prompt_ids=torch.tensor([[1, 2, 3]]),
        prompt_mask=torch.tensor([[1, 1, 1]]),
        response_ids=torch.tensor([[4, 5, 6]]),
        response_mask=torch.tensor([[1, 1, 1]]),
        old_logprobs=torch.tensor([[-1.0, -2.0, -3.0]]),
        batch_size=[1],
    )
    out = Batch.concat([short, long])
    assert out.prompt_ids.tolist() == [[0, 7, 8], [1, 2, 3]]
    assert out.prompt_mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert out.response_ids.tolist() == [[3, 0, 0], [4, 5, 6]]
    assert out.response_mask.tolist() == [[1, 0, 0], [1, 1, 1]]
    assert out.old_logprobs.tolist() == [[-0.5, 0.0, 0.0], [-1.0, -2.0, -3.0]]
    assert out.num_tokens() == short.num_tokens() + long.num_tokens()


def test_concat_errors_name_the_field():
    a = make_batch(3)
    b = make_batch(2).replace(costs=torch.zeros(2))
    with pytest.raises(ValueError, match=r"field 'costs' is set in parts \[1\] but None in parts \[0\]"):
        Batch.concat([a, b])
    c = make_batch(2).replace(response_text=None)
    with pytest.raises(ValueError, match="field 'response_text' is set in parts"):
        Batch.concat([a, c])
    with pytest.raises(ValueError, match="empty list"):
        Batch.concat([])
    with pytest.raises(TypeError, match="part 1 is a dict, not a Batch"):
        Batch.concat([a, {}])


# -------------------------------------------------------------- move / persist


def test_to_and_pickle_keep_everything():
    batch = make_batch(5)
    assert_same(batch.to("cpu"), batch)
    assert isinstance(batch.to("cpu"), Batch)
    assert_same(pickle.loads(pickle.dumps(batch)), batch)  # what Ray does between processes


def test_save_load_round_trip(tmp_path):
    batch = make_batch(6).replace(ground_truth=[1, 2.5, None, "x", [1, 2], {"a": True}])
    path = batch.save(tmp_path / "sub" / "batch.pt")
    assert path.is_file() and not (tmp_path / "sub" / "batch.pt.tmp").exists()
    loaded = Batch.load(path)
    assert_same(loaded, batch)
    assert loaded.costs is None and loaded.advantages is None
    assert list(loaded.ground_truth)[5] == {"a": True}
    # a view saves only its rows
    assert_same(Batch.load(batch.unpad(4).save(tmp_path / "view.pt")), batch.select([0, 1]))


def test_save_rejects_objects_weights_only_cannot_load(tmp_path):
    batch = make_batch(2).replace(ground_truth=["ok", object()])
    with pytest.raises(TypeError, match=r"Batch.save: ground_truth\[1\] is a object"):
        batch.save(tmp_path / "b.pt")


class _Evil:
    """Unpickling this would run code; Batch.load must refuse it."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file: .*missing.pt"):
        Batch.load(tmp_path / "missing.pt")
    torch.save({"prompt_ids": torch.zeros(2, 2)}, tmp_path / "dict.pt")
    with pytest.raises(ValueError, match="dict.pt is not a Batch file.*format marker"):
        Batch.load(tmp_path / "dict.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="text.pt is not a Batch file"):
        Batch.load(tmp_path / "text.pt")
    torch.save({"format": "rlkit.Batch", "x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt is not a Batch file.*UnpicklingError"):
        Batch.load(tmp_path / "evil.pt")
    path = make_batch(2).save(tmp_path / "future.pt")
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "version": 99}, path)
    with pytest.raises(ValueError, match="format version 99"):
        Batch.load(path)
