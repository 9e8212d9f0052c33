"""specdec.costs: measured c and r(T), cached per machine, model, dtype, batch and context."""

import json

import pytest

from specdec import costs, drafters, kernels, timing
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
    assert sorted(key.split(" | ")[-3] for key in entries) == ["B=1", "B=2"]
    assert all(" | tiny | float32 | " in key for key in entries)


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


def test_the_narrow_pass_is_timed_where_its_kernels_differ(tiny, tmp_path, monkeypatch):
    """With verify kernels other than the decode step's, ``measure`` times T = 1 built as inside a
    speculative loop (the narrow pass), stores it and puts it in r.narrow; with the same kernels
    it times no narrow pass and r.narrow is 1."""
    timed = []
    seconds = {(1, None): 1.0, (2, None): 1.5, (1, True): 1.25}

    def forward_s(model, T, speculative=None, **_):
        timed.append((T, speculative))
        return seconds[T, speculative]

    monkeypatch.setattr(timing, "forward_s", forward_s)
    monkeypatch.setenv(kernels.ENV, "default")
    plain = costs.measure(tiny, None, gamma=1, cache=costs.CostCache(tmp_path / "default.json"))
    assert timed == [(1, None), (2, None)] and plain.narrow_s is None and plain.r.narrow == 1.0

    monkeypatch.setenv(kernels.ENV, "eigen")
    cache = costs.CostCache(tmp_path / "eigen.json")
    eigen = costs.measure(tiny, None, gamma=1, cache=cache)
    assert timed[2:] == [(1, None), (2, None), (1, True)]
    assert eigen.r.narrow == 1.25 and eigen.r(2) == 1.5
    ((entry_key, entry),) = cache.read().items()
    assert entry["narrow"] == 1.25 and entry_key.endswith(" | verify=eigen")
    assert costs.measure(tiny, None, gamma=1, cache=cache) == eigen and len(timed) == 5  # read back
