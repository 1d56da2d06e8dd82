"""`make results`' shifted column (bench/results.py): the mean over DRAWS seeded draws of the shifted
split, per example, for a per-example metric (qa F1) and a corpus metric (translation chrF)."""
import dataclasses

import numpy as np
import pytest

from bench import results
from core.evaluate.compare import CompareSpec, run_comparison
from core.evaluate.metrics import corpus_stats, summarize
from core.generate.generator import Generator, System
from core.generate.variants import shifted
from core.model.loading import load_model
from core.tasks import load_task


@pytest.mark.parametrize("name", ["qa", "translation"])
def test_the_shifted_score_is_the_mean_over_draws(home, tiny_model_dir, name):
    lm = load_model(tiny_model_dir)
    gen = Generator(lm.model, lm.tokenizer)
    task, systems = load_task(name), [System("bare", prompt_format="plain"), System("hard", "Answer: {input}", "plain")]
    means, cis, first = results.scores(gen, tiny_model_dir, task, systems, "test", shift=True)
    spec = CompareSpec.for_task(task, "test", systems)
    draws = [run_comparison(gen, dataclasses.replace(spec, inputs=shifted(spec.inputs, seed=d)), tiny_model_dir)
             for d in range(results.DRAWS)]
    assert len({tuple(x["input"] for x in d["inputs"]) for d in draws}) == results.DRAWS  # three different draws
    metric, refs = task.spec.main_metric, [x["target"] for x in spec.inputs]
    for s in systems:
        if metric == "chrf":  # the corpus score over all draws' segments, not a mean of per-draw scores
            stats = [row for d in draws for row in corpus_stats(metric, d["outputs"][s.name], refs)]
            expected = summarize({metric: [0.0] * len(stats), metric + "_stats": stats}, n_resamples=10)[0]["mean"]
        else:
            expected = np.mean([np.mean(d["scores"][s.name][metric]) for d in draws])
        assert means[s.name] == pytest.approx(expected, abs=1e-9)
        assert cis[s.name][0] <= means[s.name] <= cis[s.name][1]
    assert first == {s.name: draws[0]["outputs"][s.name][0] for s in systems}
