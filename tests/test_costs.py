"""specdec.costs: measured c and r(T), cached per machine, model, dtype, batch and context."""

import json

import numpy as np
import pytest

from specdec import costs, drafters, timing
from specdec.models import Model, tiny_config


@pytest.fixture(scope="module")
def tiny():
    return Model.random(tiny_config(), seed=0, name="tiny")


def test_costs_are_measured_once_then_read_back(tiny, tmp_path, monkeypatch):
    cache = costs.CostCache(tmp_path / "costs.json")
    ngram = drafters.make("ngram", tiny)
    kw = dict(drafter_key="ngram", context=32, cache=cache, repeats=2)
    first = costs.measure(tiny, ngram, gamma=3, **kw)
    assert sorted(first.latencies) == [1, 2, 3, 4] and first.c > 0
    assert first.r(1) == 1.0 and first.step_s == first.latencies[1]

    timed = []

    def forward_s(model, T, **_):
        timed.append(T)
        return 1.0

    def draft_cost_ratio(*args, **kw):
        raise AssertionError("c was cached")

    monkeypatch.setattr(timing, "forward_s", forward_s)
    monkeypatch.setattr(timing, "draft_cost_ratio", draft_cost_ratio)
    assert costs.measure(tiny, ngram, gamma=3, **kw) == first  # nothing timed
    assert timed == []
    longer = costs.measure(tiny, ngram, gamma=5, **kw)  # only the widths not yet measured
    assert timed == [5, 6] and longer.latencies == {**first.latencies, 5: 1.0, 6: 1.0}
    costs.measure(tiny, None, gamma=1, batch=2, context=32, cache=cache)  # another batch: another entry
    assert timed == [5, 6, 1, 2]
    entries = json.loads(cache.path.read_text())
    assert sorted(key.rsplit(" | ", 2)[1] for key in entries) == ["B=1", "B=2"]
    assert all(" | tiny | float32 | " in key for key in entries)


def test_the_prefill_is_timed_once_per_batch_and_padded_length(tiny, tmp_path, monkeypatch):
    cache = costs.CostCache(tmp_path / "costs.json")
    costs.measure(tiny, None, gamma=1, context=64, cache=cache, repeats=2)  # an entry it joins
    seconds = costs.prefill_s(tiny, batch=1, length=64, cache=cache, repeats=1)
    assert seconds > 0 and cache.read()[costs.key(tiny, 1, 64)]["prefill"] == seconds
    assert sorted(cache.read()[costs.key(tiny, 1, 64)]["latencies"]) == ["1", "2"]  # kept

    timed = []

    def prefill_s(model, T, *, batch, **_):
        timed.append((T, batch))
        return 1.0

    monkeypatch.setattr(timing, "prefill_s", prefill_s)
    assert costs.prefill_s(tiny, batch=1, length=64, cache=cache) == seconds and timed == []
    assert costs.prefill_s(tiny, batch=2, length=64, cache=cache) == 1.0
    assert timed == [(64, 2)]  # another batch: timed anew


def test_a_corrupt_cost_cache_is_named_and_kept(tiny, tmp_path):
    path = tmp_path / "costs.json"
    path.write_text('{"a": [1, 2')
    with pytest.raises(ValueError, match=f"cost cache {path} is corrupt"):
        costs.measure(tiny, None, gamma=1, context=32, cache=costs.CostCache(path), repeats=2)
    assert path.read_text() == '{"a": [1, 2'  # never overwritten
    path.write_text('{"a": {"c": {}}}')  # JSON, but not a cost entry
    with pytest.raises(ValueError, match=r"not a \{key: \{latencies, c\}\} object"):
        costs.CostCache(path).read()


def test_a_cached_drafter_needs_a_key(tiny, tmp_path):
    with pytest.raises(ValueError, match="drafter_key"):
        costs.measure(tiny, drafters.make("ngram", tiny), cache=costs.CostCache(tmp_path / "c.json"))


def test_the_timed_prefill_is_the_loops_prefill_without_the_head():
    """decode_loop discards the prefill's logits, so XLA drops the vocabulary product; the timed
    prefill must not pay it either (it would overstate the prefill taken out of a wall time)."""
    model = Model.random(tiny_config(vocab_size=97), seed=0)
    tokens, positions, cache = timing._step_inputs(model, 24, 0, 64, 2)
    compiled = timing._prefill.lower(model.graphdef, model.params, tokens, positions, cache).compile()
    shapes = [shape for _, shape in timing.thunks(compiled)]
    assert shapes and not any(",97]" in shape for shape in shapes)  # no [B, T, V] result
    filled = timing._prefill(model.graphdef, model.params, tokens, positions, cache)
    _, want, _ = model.apply(model.params, tokens, positions, model.init_cache(2, 64))
    np.testing.assert_allclose(np.asarray(filled.k[0]), np.asarray(want.k[0]), atol=1e-6)
    assert np.asarray(filled.lengths).tolist() == [24, 24]
