"""specdec.costs: measured c and r(T), cached per machine, model, dtype, batch and context."""

import json

import jax
import pytest

from specdec import costs, drafters, kernels, timing
from specdec.models import Model, native, tiny_config, transformer


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

    def passes_s(model, widths, narrow=False, **_):
        timed.extend(widths)
        return {T: 1.0 for T in widths}

    def draft_cost_ratio(*args, **kw):
        raise AssertionError("c was cached")

    monkeypatch.setattr(timing, "passes_s", passes_s)
    monkeypatch.setattr(timing, "draft_cost_ratio", draft_cost_ratio)
    assert costs.measure(tiny, ngram, gamma=3, **kw) == first  # nothing timed
    assert timed == []
    longer = costs.measure(tiny, ngram, gamma=5, **kw)  # new widths: every width timed again, together
    assert timed == [1, 2, 3, 4, 5, 6] and longer.latencies == {T: 1.0 for T in range(1, 7)}
    (stored,) = cache.read().values()  # the entry changed in place is written
    assert stored["latencies"] == {str(T): 1.0 for T in range(1, 7)}
    assert costs.measure(tiny, ngram, gamma=2, **kw) == longer  # fewer widths: read back
    costs.measure(tiny, None, gamma=1, batch=2, context=32, cache=cache)  # another batch: another entry
    assert timed == [1, 2, 3, 4, 5, 6, 1, 2]
    entries = json.loads(cache.path.read_text())
    assert sorted(key.split(" | ")[-3] for key in entries) == ["B=1", "B=2"]
    assert all(" | tiny | float32 | " in key for key in entries)
    monkeypatch.setattr(transformer, "REVISION", transformer.REVISION + 1)  # the forward changed
    costs.measure(tiny, None, gamma=1, batch=2, context=32, cache=cache)  # measured again
    assert timed == [1, 2, 3, 4, 5, 6, 1, 2, 1, 2] and len(cache.read()) == 3
    monkeypatch.setattr(native, "sources_key", lambda: "changed")  # the C++ kernels changed
    costs.measure(tiny, None, gamma=1, batch=2, context=32, cache=cache)  # measured again
    assert timed[-2:] == [1, 2] and len(timed) == 12 and len(cache.read()) == 4


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

    def passes_s(model, widths, narrow=False, **_):
        timed.append((list(widths), narrow))
        return {1: 1.0, 2: 1.5} | ({"narrow": 1.25} if narrow else {})

    monkeypatch.setattr(timing, "passes_s", passes_s)
    monkeypatch.setenv(kernels.ENV, "default")
    plain = costs.measure(tiny, None, gamma=1, cache=costs.CostCache(tmp_path / "default.json"))
    assert timed == [([1, 2], False)] and plain.narrow_s is None and plain.r.narrow == 1.0

    monkeypatch.setenv(kernels.ENV, "eigen")
    cache = costs.CostCache(tmp_path / "eigen.json")
    eigen = costs.measure(tiny, None, gamma=1, cache=cache)
    assert timed[1:] == [([1, 2], True)]
    assert eigen.r.narrow == 1.25 and eigen.r(2) == 1.5
    ((entry_key, entry),) = cache.read().items()
    assert entry["narrow"] == 1.25 and entry_key.endswith(" | verify=eigen")
    assert costs.measure(tiny, None, gamma=1, cache=cache) == eigen and len(timed) == 2  # read back


def test_interleaved_runs_alternate_within_each_round(monkeypatch):
    """``timing.interleaved_s`` times every run once per round, in turn, each round starting one
    run later, and keeps the median over the rounds: a slow minute in one round moves no run's
    result, and no run always follows the same one."""
    calls = []
    seconds = {"a": iter([1.0, 9.0, 1.2, 1.1]), "b": iter([2.0, 9.0, 2.2, 2.1]), "c": iter([3.0] * 4)}

    def median_s(run, repeats, warmup):
        assert (repeats, warmup) == (3, 3)  # the default warm-up, as median_s's own
        calls.append(run())
        return next(seconds[calls[-1]])

    monkeypatch.setattr(timing, "median_s", median_s)
    runs = {label: lambda label=label: label for label in "abc"}
    got = timing.interleaved_s(runs, repeats=3, rounds=4)  # round 2 is slow for a and b
    assert calls == [*"abc", *"bca", *"cab", *"abc"]
    assert got == {"a": pytest.approx(1.15), "b": pytest.approx(2.15), "c": 3.0}


def test_passes_are_timed_with_their_builds(tiny, monkeypatch):
    """``timing.passes_s`` times each width and the narrow pass on the real programs: positive
    seconds, labelled by width, the narrow pass apart."""
    monkeypatch.setenv(kernels.ENV, "eigen")
    got = timing.passes_s(tiny, [1, 3], narrow=True, context=16, capacity=32, steps=2, repeats=2, rounds=1)
    assert sorted(got, key=str) == [1, 3, "narrow"] and all(0 < s < 1 for s in got.values())


def test_passes_of_every_width_share_one_cache(tiny, monkeypatch):
    """Runs timed one after another pass one donated cache along: one cache in memory however many
    widths are timed (a run's own cache each made the cost measurement at batch 32 hold ten
    1.6 GB caches), and each call hands it back at the context it was given."""
    held, made = {}, []
    init_cache = type(tiny).init_cache
    monkeypatch.setattr(type(tiny), "init_cache", lambda *a: made.append(a) or init_cache(*a))
    runs = [timing.pass_run(tiny, T, 16, 32, 3, None, 2, {}, held) for T in (1, 3, 5)]
    assert len(made) == 1  # the runs after the first take the holder's cache: no spare one is made
    shape = held["cache"].k[0].shape

    def caches_alive():
        return sum(a.shape == shape for a in jax.live_arrays()) // tiny.config.n_layers

    for run in runs * 2:
        run()
        assert caches_alive() == 1
        assert held["cache"].lengths.tolist() == [16, 16, 16]
