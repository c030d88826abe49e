"""Export round trips through the real libraries: SAELens and sparsify load the exported SAE and give
saeception's codes and reconstructions; Hugging Face loads the classifier and gives its logits."""

import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from paths import REPO
from safetensors.torch import load_file

from saeception.config import SAE_KINDS, ModelConfig, build_config
from saeception.eval.metrics import min_firings_for
from saeception.export import ExportError, build_classifier, export_run, main
from saeception.method.chain import run_chain
from saeception.method.sae import SAE
from saeception.models.classifiers import TapModel, build_model, load_tokenizer
from saeception.store.artifacts import ChainPaths, load_state_strict, load_weights

ROOT = REPO
FAST = {"device": "cpu", "finetune.epochs": 1, "sae.steps": 100, "sae.batch_size": 64, "sae.k": 4,
        "aux.epochs": 1, "model.hidden_sizes": [32, 16], "data.max_examples": 150, "eval.probe_max_iter": 50}


@pytest.fixture(scope="module")
def mlp_runs(tmp_path_factory) -> dict[str, Path]:
    """One MLP run per SAE kind; the TopK run has two cycles (for the cycle choice)."""
    runs = {}
    for kind in SAE_KINDS:
        root = tmp_path_factory.mktemp(f"run_{kind}")
        run_chain(build_config({**FAST, "sae.kind": kind, "chain.cycles": 1 if kind == "topk" else 0}), root)
        runs[kind] = root
    return runs


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory, gpt2_dir, text_csv) -> Path:
    root = tmp_path_factory.mktemp("run_gpt2")
    run_chain(build_config({"device": "cpu", "model.name": str(gpt2_dir), "data.name": str(text_csv),
                            "data.max_examples": 40, "finetune.epochs": 1, "sae.steps": 50, "sae.k": 4,
                            "chain.cycles": 0, "eval.probe_max_iter": 50}), root)
    return root


def layer_acts(run: Path, cycle: int) -> torch.Tensor:
    """Real activations of the tapped MLP layer on digits."""
    from sklearn.datasets import load_digits

    tensors, _ = load_weights(ChainPaths(run).cycle(cycle).model)
    tap = TapModel(build_classifier("mlp", tensors), -1)
    with torch.no_grad():
        return tap({"features": torch.tensor(load_digits().data[:256] / 16.0, dtype=torch.float32)})[1]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def ours(run: Path, cycle: int) -> SAE:
    return SAE.load(ChainPaths(run).cycle(cycle).sae)


@pytest.mark.parametrize("kind,architecture", [("topk", "TopKSAE"), ("l1", "StandardSAE"), ("batchtopk", "JumpReLUSAE"),
                                               ("jumprelu", "JumpReLUSAE")])
def test_saelens_round_trip(mlp_runs, tmp_path, kind, architecture):
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens not installed (pip install saeception[export])")
    written = export_run(mlp_runs[kind], tmp_path / "out", formats=["saelens"])
    sae, x = ours(mlp_runs[kind], 0 if kind != "topk" else 1), layer_acts(mlp_runs[kind], 0 if kind != "topk" else 1)
    # The fold must matter for this test to bite.
    assert abs(float(sae.input_scale) - 1) > 0.5
    theirs = sae_lens.SAE.load_from_disk(written["saelens"], device="cpu")
    assert type(theirs).__name__ == architecture
    assert theirs.cfg.metadata.hook_name == "hidden.1" and theirs.cfg.metadata.model_name == "mlp"
    with torch.no_grad():
        codes, their_codes = sae.encode(x), theirs.encode(x)
        assert (codes > 0).any(-1).float().mean() > 0.5  # most examples have active latents
        # The scale folded into the biases: the same latents fire, codes s times ours, our reconstructions.
        assert rel(their_codes, codes * sae.input_scale) < 1e-5 and torch.equal(their_codes > 0, codes > 0)
        assert rel(theirs.decode(their_codes), sae.decode(codes)) < 1e-5
        norms = theirs.W_dec.norm(dim=-1)  # SAEBench warns on, and SAELens' fold_W_dec_norm assumes, unit rows
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    if kind == "topk":
        assert theirs.cfg.k == sae.k
    # SAELens' per-latent log10 firing density, of the SAE's training activations.
    sparsity = load_file(str(written["saelens"] / "sparsity.safetensors"))["sparsity"]
    assert sparsity.shape == (sae.n_latents,) and (sae.firing_density >= 0).all()
    assert torch.allclose(sparsity, torch.log10(sae.firing_density + 1e-10))
    if kind in ("batchtopk", "jumprelu"):
        # The threshold must cut some positive pre-activations, or the test could not see it.
        pre = torch.relu((x / sae.input_scale - sae.b_dec) @ sae.W_enc + sae.b_enc)
        assert ((pre > 0) & (pre <= sae.threshold)).any()
    if kind == "jumprelu":  # one learned threshold per latent, folded with the scale
        assert torch.allclose(theirs.threshold, sae.threshold * sae.input_scale) and sae.threshold.std() > 0


def test_sparsify_round_trip(mlp_runs, tmp_path):
    sparsify = pytest.importorskip("sparsify", reason="eai-sparsify not installed (pip install saeception[export])")
    written = export_run(mlp_runs["topk"], tmp_path / "out", formats=["sparsify"])
    assert written["sparsify"] == tmp_path / "out" / "sparsify" / "hidden.1"
    sae, x = ours(mlp_runs["topk"], 1), layer_acts(mlp_runs["topk"], 1)
    coder = sparsify.SparseCoder.load_from_disk(written["sparsify"])
    # sparsify's own layout: one folder per hookpoint, named after the module, as load_many reads it.
    assert set(sparsify.SparseCoder.load_many(str(tmp_path / "out" / "sparsify"), local=True)) == {"hidden.1"}
    assert coder.cfg.k == sae.k and coder.cfg.normalize_decoder
    with torch.no_grad():
        codes = sae.encode(x)
        top_acts, top_indices, _ = coder.encode(x)
        dense = torch.zeros_like(codes).scatter(-1, top_indices, top_acts)
        assert rel(dense, codes * sae.input_scale) < 1e-5
        norms = coder.W_dec.norm(dim=-1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
        assert rel(coder.decode(top_acts, top_indices), sae.decode(codes)) < 1e-5


def test_sparsify_refuses_non_topk(mlp_runs, tmp_path):
    with pytest.raises(ExportError, match=r"^sae\.kind: sparsify holds TopK SAEs only"):
        export_run(mlp_runs["l1"], tmp_path / "out", formats=["sparsify"])
    assert not (tmp_path / "out").exists()
    written = export_run(mlp_runs["l1"], tmp_path / "out")  # the default skips it, and the card says why
    assert set(written) == {"saelens", "hf", "browser", "card"}
    assert "No sparsify export" in written["card"].read_text()


def test_mlp_classifier_export(mlp_runs, tmp_path):
    written = export_run(mlp_runs["topk"], tmp_path / "out", formats=["hf"])
    cfg = json.loads((written["hf"] / "config.json").read_text())
    assert cfg == {"architecture": "saeception.MLP", "input_dim": 64, "hidden_sizes": [32, 16], "n_classes": 10,
                   "tapped_layer": "hidden.1"}
    spec = importlib.util.spec_from_file_location("exported_mlp", written["hf"] / "mlp.py")
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    exported = loader.load_mlp(written["hf"])
    model = build_model(ModelConfig(hidden_sizes=[32, 16]), 10, 64)
    load_state_strict(model, load_weights(ChainPaths(mlp_runs["topk"]).cycle(1).model)[0])
    features = torch.rand(8, 64)
    with torch.no_grad():
        assert torch.equal(exported(features), model(features))


def test_gpt2_export(gpt2_run, gpt2_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    written = export_run(gpt2_run, tmp_path / "out")
    assert set(written) == {"saelens", "sparsify", "hf", "browser", "card"}
    cfg = json.loads((written["saelens"] / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post" and cfg["metadata"]["saeception"]["pooling"] == "last"
    assert cfg["metadata"]["saeception"]["module"] == "transformer.h.1"
    # sparsify loads the base model (AutoModel: GPT2Model), whose layer is `h.1`, not the wrapper's name.
    assert written["sparsify"].name == "h.1"
    card = written["card"].read_text()  # a text model's input preprocessing: its tokenizer, truncation, padding
    assert "tokenized by the classifier's tokenizer with its special tokens, truncated to data.max_length = 128 " \
           "tokens, batches padded on the right" in card
    from transformers import AutoModel

    AutoModel.from_pretrained(written["hf"]).get_submodule(written["sparsify"].name)  # the hookpoint exists there
    sparsify = pytest.importorskip("sparsify", reason="eai-sparsify not installed (pip install saeception[export])")
    assert sparsify.SparseCoder.load_from_disk(written["sparsify"]).cfg.k == cfg["k"]
    # The reference: the classifier as the chain built it, with the cycle's weights.
    model_cfg = ModelConfig(name=str(gpt2_dir))
    tok = load_tokenizer(model_cfg)
    model = build_model(model_cfg, 3, pad_token_id=tok.pad_token_id)
    load_state_strict(model, load_weights(ChainPaths(gpt2_run).cycle(0).model)[0])
    exported = AutoModelForSequenceClassification.from_pretrained(written["hf"]).eval()
    exported_tok = AutoTokenizer.from_pretrained(written["hf"])
    texts = ["apple banana the cherry", "engine", "violin piano a drum of the flute and harp"]  # padded batch
    batch, exported_batch = (t(texts, padding=True, return_tensors="pt") for t in (tok, exported_tok))
    assert torch.equal(batch["input_ids"], exported_batch["input_ids"])
    with torch.no_grad():
        assert torch.equal(exported(**exported_batch).logits, model.eval()(**batch).logits)


def test_model_card(mlp_runs, tmp_path):
    run = shutil.copytree(mlp_runs["topk"], tmp_path / "run")
    results = json.loads(ChainPaths(run).results().read_text())
    results["splits"] = {"train": {"n": 90, "ids_sha256": "ab" * 32}, "test": {"n": 30, "ids_sha256": "cd" * 32}}
    ChainPaths(run).results().write_text(json.dumps(results))
    extra = {"What was searched": "sae.k in [4, 8]", "Confirmation": "| seed | sae_u |\n|---|---|\n| 1 | 0.5 |"}
    written = export_run(run, tmp_path / "out", card_extra=extra)
    card = written["card"].read_text()
    metrics = results["cycles"][1]
    for text in ("cycle 1", "`sae.kind` | topk", "`model.hidden_sizes` | [32, 16]", f"`sae_u` | {metrics['sae_u']:.4f}",
                 f"`task_accuracy` | {metrics['task_accuracy']:.4f}", "| train | 90 | `" + "ab" * 32, "| test | 30 |",
                 "## What was searched\n\nsae.k in [4, 8]", "## Confirmation", "SAE.load_from_disk(\"saelens\"",
                 "SparseCoder.load_from_disk(\"sparsify/hidden.1\")", "load_mlp(\"classifier\")",
                 f"({float(ours(run, 1).input_scale):.6g}) folded",
                 # The input preprocessing, from the data code: digits' pixel counts divided by 16.
                 "## Inputs\n\nThe classifier was trained, and the SAE's activations taken, on scikit-learn's digits: "
                 "the 64 pixel counts (0 to 16) divided by 16 (to [0, 1])"):
        assert text in card, text
    # Every run records its splits (results.json "splits"): the card of a plain run shows them too.
    assert "## Data splits" in export_run(mlp_runs["topk"], tmp_path / "plain", formats=["saelens"])["card"].read_text()


def test_cycle_choice(mlp_runs, tmp_path):
    run = shutil.copytree(mlp_runs["topk"], tmp_path / "run")

    def exported_w_enc(out: Path) -> torch.Tensor:
        return load_file(str(out / "saelens" / "sae_weights.safetensors"))["W_enc"]

    export_run(run, tmp_path / "last", formats=["saelens"])
    assert torch.equal(exported_w_enc(tmp_path / "last"), ours(run, 1).W_enc)
    export_run(run, tmp_path / "c0", formats=["saelens"], cycle=0)
    assert torch.equal(exported_w_enc(tmp_path / "c0"), ours(run, 0).W_enc)
    export_run(ChainPaths(run).cycle(0).path, tmp_path / "dir", formats=["saelens"])  # one cycle's directory
    assert torch.equal(exported_w_enc(tmp_path / "dir"), ours(run, 0).W_enc)
    assert json.loads((tmp_path / "dir/saelens/cfg.json").read_text())["metadata"]["hook_name"] == "hidden.1"
    ChainPaths(run).cycle(1).manifest.unlink()  # an incomplete last cycle: the last complete one is exported
    export_run(run, tmp_path / "incomplete", formats=["saelens"])
    assert torch.equal(exported_w_enc(tmp_path / "incomplete"), ours(run, 0).W_enc)


def test_a_checkpoint_alone_needs_its_config(mlp_runs, tmp_path):
    """A cycle directory without its run's results.json (a Ray Train checkpoint, a copied cycle) holds no config:
    refused with one line saying how to supply it; with --config (the run's results.json, or a config file as
    `saeception.run --config` reads it) the export names the layer and the dataset, as from the run."""
    run = mlp_runs["topk"]
    alone = shutil.copytree(ChainPaths(run).cycle(1).path, tmp_path / "train-t1" / "cycle_001")
    with pytest.raises(ExportError, match=r"^--config: .*cycle_001 has no results\.json beside it; pass --config with "
                                          r"the run's results\.json or its config YAML"):
        export_run(alone, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    results = json.loads(ChainPaths(run).results().read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(results["config"]))
    for source in (ChainPaths(run).results(), tmp_path / "config.yaml"):
        out = tmp_path / source.stem
        written = export_run(alone, out, config=source)
        meta = json.loads((written["saelens"] / "cfg.json").read_text())["metadata"]
        assert (meta["hook_name"], meta["dataset_path"]) == ("hidden.1", "digits")
        assert written["sparsify"] == out / "sparsify" / "hidden.1"
        card = written["card"].read_text()
        assert "divided by 16" in card and ("| train |" in card) == (source.name == "results.json")
    # The results.json of another run (or another run's config) would mislabel the export: refused.
    other = tmp_path / "other" / "results.json"
    other.parent.mkdir()
    other.write_text(json.dumps({**results, "cycles": [{**results["cycles"][1], "sae_u": -1.0}]}))
    shutil.copytree(alone, other.parent / "cycle_001")
    with pytest.raises(ExportError, match=r"^--config: .*other/results\.json does not hold cycle 1 of .*; pass --config"):
        export_run(other.parent / "cycle_001", tmp_path / "wrong_run")
    (tmp_path / "k8.yaml").write_text(yaml.safe_dump({**results["config"], "sae": {**results["config"]["sae"], "k": 8}}))
    with pytest.raises(ExportError, match=r"k8\.yaml: sae\.k is 8, but .*cycle_001 holds 4; the config must be this run's"):
        export_run(alone, tmp_path / "wrong_k", config=tmp_path / "k8.yaml")


def _damaged(run: Path, tmp: Path) -> Path:
    copy = shutil.copytree(run, tmp / "damaged")
    sae = ChainPaths(copy).cycle(1).sae.with_suffix(".safetensors")
    sae.write_bytes(sae.read_bytes()[:-8])
    return copy


@pytest.mark.parametrize("case,args,message", [
    ("missing", ["{tmp}/nope", "--out", "{out}"], r"^error: .*/nope: must be a run directory"),
    ("damaged", ["{damaged}", "--out", "{out}"], r"^error: .*sae\.safetensors: does not match its checksum"),
    ("format", ["{topk}", "--out", "{out}", "--format", "onnx"], r"^error: --format: must be one of saelens, sparsify, hf, got 'onnx'"),
    ("kind", ["{l1}", "--out", "{out}", "--format", "sparsify"], r"^error: sae\.kind: sparsify holds TopK SAEs only"),
    ("cycle", ["{topk}", "--out", "{out}", "--cycle", "7"], r"^error: --cycle: must be one of \[0, 1\], got 7"),
    ("out_file", ["{topk}", "--out", "{file}"], r"^error: --out: .* is a file"),
    ("out_full", ["{topk}", "--out", "{full}"], r"^error: --out: .* is not empty"),
    ("no_out", ["{topk}"], r"^error: the following arguments are required: --out"),
    ("checkpoint", ["{checkpoint}", "--out", "{out}"], r"^error: --config: .* has no results\.json beside it; pass --config"),
    ("bad_config", ["{checkpoint}", "--out", "{out}", "--config", "{file}"], r"^error: --config: .*file must hold a mapping"),
])
def test_cli_bad_input(mlp_runs, tmp_path, capsys, case, args, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    paths = {"tmp": tmp_path, "out": tmp_path / "out", "topk": mlp_runs["topk"], "l1": mlp_runs["l1"],
             "file": tmp_path / "file", "full": tmp_path / "full",
             "checkpoint": shutil.copytree(ChainPaths(mlp_runs["topk"]).cycle(1).path, tmp_path / "ckpt" / "cycle_001")
             if case in ("checkpoint", "bad_config") else None,
             "damaged": _damaged(mlp_runs["topk"], tmp_path) if case == "damaged" else None}
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    try:
        rc = main([a.format(**paths) for a in args])
    except SystemExit as e:  # argparse's own errors exit
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert re.match(message, err), err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_cli_as_a_user_runs_it(mlp_runs, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "saeception.export", str(mlp_runs["topk"]), "--out", str(tmp_path / "out"),
           "--format", "saelens", "--format", "hf"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "classifier", "latents.html", "saelens"]
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert again.returncode == 2 and again.stderr.startswith("error: --out:") and len(again.stderr.splitlines()) == 1
    (tmp_path / "out" / "mine.txt").write_text("kept")
    assert main([*cmd[3:], "--force"]) == 0
    assert (tmp_path / "out" / "mine.txt").read_text() == "kept"  # --force replaces only what the export writes


def chromium_dom(page: Path, tmp_path: Path) -> str:
    """The page's DOM after a real headless browser (Debian's chromium) loaded it from disk, offline; and a
    screenshot it painted."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed (apt-get install chromium; .ci/run installs it)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = subprocess.run([*flags, f"--screenshot={tmp_path / 'page.png'}", "--window-size=1000,800", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and (tmp_path / "page.png").stat().st_size > 10_000, shot.stderr[-2000:]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


@pytest.mark.parametrize("which", ["mlp", "gpt2"])
def test_the_latent_browser_opens_in_a_real_browser_and_shows_the_latents(which, mlp_runs, gpt2_run, tmp_path):
    """best/latents.html (any export of a cycle): the top latents by the chosen score, each with its top-activating
    test examples and examples across its activation quartiles (digits as images, texts as text), activation
    histogram, class effect through the head (the MLP's last layer feeds it; GPT-2's block does not) and best
    match in the previous cycle; every latent's index row; the density histograms: found in the DOM chromium built
    from the file, a static page that fetches nothing."""
    run = mlp_runs["topk"] if which == "mlp" else gpt2_run
    cycle = 1 if which == "mlp" else 0
    cycle_dir = ChainPaths(run).cycle(cycle)
    summary = json.loads(cycle_dir.latents.read_text())
    written = export_run(run, tmp_path / "out", formats=["saelens"])
    assert "latents.html" in written["card"].read_text()
    page = written["browser"].read_text()
    assert "<script" not in page and not re.search(r'(src|href)="(?!#|data:)', page)  # nothing to fetch
    dom = chromium_dom(written["browser"], tmp_path)
    shown = [int(x) for x in re.findall(r'<section class="latent" id="latent-\d+" data-latent="(\d+)"', dom)]
    assert shown == [d["latent"] for d in summary["latents"]] and 0 < len(shown) <= 32
    assert summary["min_firings"] == min_firings_for(summary["n_examples"], summary["min_firing_rate"])
    assert all(d["firings"] >= summary["min_firings"] for d in summary["latents"])
    scores = [d["score"] for d in summary["latents"]]
    assert summary["score"] == "csi_shrunk" and scores == sorted(scores, reverse=True)  # the default browser.score
    assert all(d["score"] == pytest.approx(d["csi"] * d["firings"] / (d["firings"] + 20)) for d in summary["latents"])
    examples = dom.count('<li class="example"')
    assert examples == sum(len(d["top"]) + len(d["range"]) for d in summary["latents"]) and examples > 2 * len(shown)
    assert dom.count('<ol class="examples range') >= len(shown)
    assert dom.count('class="plot acts"') == len(shown) and all(sum(d["hist"]) == d["firings"] for d in summary["latents"])
    n = ours(run, cycle).n_latents
    assert summary["n_latents_total"] == n and len(re.findall(r'<tr id="i-\d+">', dom)) == n  # every latent reachable
    assert dom.count('class="plot density"') == 2  # the test split, and the SAE's training densities
    sae = ours(run, cycle)
    if which == "mlp":
        assert dom.count('<img class="image"') == examples  # each 8 x 8 digit drawn
        # The class effect is the head's weight times the latent's decoder row (in the layer's units).
        head = load_weights(ChainPaths(run).cycle(cycle).model)[0]["head.weight"].double()
        effect = (sae.input_scale * sae.W_dec).double() @ head.t()
        assert dom.count('class="plot effect"') == len(shown)
        for d in summary["latents"]:
            assert d["effect"] == pytest.approx(effect[d["latent"]].tolist(), rel=1e-3, abs=1e-6)
        # Each latent's best match among cycle 0's latents, by decoder cosine.
        before = ours(run, 0).decoder_directions()
        cos = sae.decoder_directions() @ before.t()
        assert summary["previous_cycle"] == 0 and summary["index"]["match"] == cos.argmax(1).tolist()
        assert summary["index"]["match_cos"] == pytest.approx(cos.max(1).values.tolist(), abs=1e-3)
        d = summary["latents"][0]
        assert f'Best match in cycle 0: latent {d["match"]}, decoder cosine {d["match_cos"]:.3f}' in dom
    else:
        first = summary["latents"][0]["top"][0]["id"]
        text = summary["examples"][str(first)]
        assert text and html.escape(text) in dom  # the example's own text
        assert "Class effect: not shown: the layer does not feed a linear head" in dom
        assert 'class="plot effect"' not in dom and "Previous cycle: none (cycle 0)" in dom


def test_saelens_splices_the_gpt2_sae_into_transformer_lens_by_its_hook_name(gpt2_run, tmp_path):
    """SAELens' hook_name is TransformerLens' `blocks.1.hook_resid_post` (model_class_name HookedTransformer):
    HookedSAETransformer, built offline from the exported classifier's GPT-2 weights, runs the exported SAE there,
    on the activations saeception's tap reads, giving saeception's reconstructions."""
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens not installed (pip install saeception[export])")
    from types import SimpleNamespace

    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    written = export_run(gpt2_run, tmp_path / "out", formats=["saelens", "hf"])
    theirs = sae_lens.SAE.load_from_disk(written["saelens"], device="cpu")
    meta = theirs.cfg.metadata
    assert (meta.hook_name, meta.model_class_name) == ("blocks.1.hook_resid_post", "HookedTransformer")
    assert meta.saeception["module"] == "transformer.h.1"
    assert meta.model_from_pretrained_kwargs == {"center_writing_weights": False}  # TL's centring moves the residual
    hf = AutoModelForSequenceClassification.from_pretrained(written["hf"]).eval()
    c = hf.config
    cfg = HookedTransformerConfig(d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head,
                                  d_mlp=c.n_inner or 4 * c.n_embd, n_layers=c.n_layer, n_ctx=c.n_positions,
                                  eps=c.layer_norm_epsilon, d_vocab=c.vocab_size, act_fn=c.activation_function,
                                  normalization_type="LN", original_architecture="GPT2LMHeadModel")
    tl = sae_lens.HookedSAETransformer(cfg)
    lm = SimpleNamespace(transformer=hf.transformer, lm_head=SimpleNamespace(weight=hf.transformer.wte.weight))
    tl.load_state_dict(convert_gpt2_weights(lm, cfg), strict=False)
    tl.eval()
    ids = AutoTokenizer.from_pretrained(written["hf"])("apple banana the cherry violin", return_tensors="pt")["input_ids"]
    seen = {}
    handle = hf.get_submodule(meta.saeception["module"]).register_forward_hook(lambda m, i, o: seen.update(h=o[0] if isinstance(o, tuple) else o))
    ours_sae = ours(gpt2_run, 0)
    with torch.no_grad():
        hf(ids)
        handle.remove()
        h = seen["h"][0]  # (T, d): what saeception's tap reads, every token
        plain = tl(ids)
        spliced, cache = tl.run_with_cache_with_saes(ids, saes=[theirs])
    hook = meta.hook_name
    assert rel(cache[f"{hook}.hook_sae_input"][0], h) < 1e-4
    recon = ours_sae.decode(ours_sae.encode(h))
    assert rel(cache[f"{hook}.hook_sae_recons"][0], recon) < 1e-4
    assert not torch.allclose(spliced, plain)  # the reconstruction replaced the layer downstream
