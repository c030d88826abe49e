"""Export one cycle of a finished chain to the tools researchers use: the SAE for SAELens and
EleutherAI sparsify, the classifier for Hugging Face, and a model card (README.md) beside them.

    python -m saeception.export RUN_OR_CYCLE_DIR --out DIR [--format saelens|sparsify|hf ...] [--cycle N]
                                [--config FILE] [--force]

Both SAE libraries compute codes = act((x - b_dec) @ W_enc + b_enc) and x_hat = codes @ W_dec + b_dec
with no input scaling, while saeception divides x by `input_scale` (s > 0) first and multiplies the
reconstruction by s after. The scale folds exactly into the biases, keeping the unit-norm decoder rows that
SAEBench checks and SAELens' `fold_W_dec_norm` assumes: ReLU, TopK and JumpReLU are positively homogeneous
(act(s*p) = s*act(p), a threshold scaled with them), so with z' = s*z

    (x - s*b_dec) @ W_enc + s*b_enc  =  s * ((x/s - b_dec) @ W_enc + b_enc)    pre-activations times s
    z' @ W_dec + s*b_dec             =  s * (z @ W_dec + b_dec)                 the same reconstructions

The exported SAE reads the layer's raw activations, selects the same latents, gives codes s times
saeception's and the same reconstructions; W_enc and W_dec are saeception's own.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from saeception.data.tasks import describe_inputs
from saeception.eval.latents import render_html
from saeception.method.sae import SAE
from saeception.models import mlp_loader
from saeception.models.classifiers import MLP, TapModel, block_list, load_tokenizer, model_source
from saeception.store.artifacts import (
    ChainPaths,
    CycleDir,
    load_state_strict,
    load_weights,
    save_tensors,
    write_json,
)

from .config import ConfigError, ModelConfig, build_config, flatten, read_yaml, to_dict

log = logging.getLogger(__name__)

FORMATS = ("saelens", "sparsify", "hf")
# SAELens architecture per saeception kind. BatchTopK's inference rule pre * (pre > threshold) on
# pre = relu(h) equals JumpReLU's relu(h) * (h > threshold) for every threshold >= 0 (and the
# threshold, a running mean of kept activations, is never negative); SAELens itself saves its
# trained BatchTopK SAEs as JumpReLU. A JumpReLU SAE's per-latent thresholds are kept >= 0 in training.
SAELENS_ARCHITECTURE = {"l1": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}
# The SAELens on-disk format written here; SAELens treats configs without it as pre-6.0 and renames keys.
SAELENS_FORMAT_VERSION = "6.0.0"
# Top-level names inside the output directory; nothing else in it is touched, even under --force.
CARD, SAELENS_DIR, SPARSIFY_DIR, HF_DIR, BROWSER = "README.md", "saelens", "sparsify", "classifier", "latents.html"
SAELENS_SPARSITY = "sparsity.safetensors"  # sae_lens.constants.SPARSITY_FILENAME
SPARSITY_EPS = 1e-10  # what SAELens adds before log10 (sae_lens.training.sae_trainer._log_feature_sparsity)


class ExportError(ValueError):
    """Bad export input; the message starts with the field or path at fault."""


@dataclass
class Source:
    """What one export reads: a verified cycle and its run's config."""

    cycle_dir: CycleDir
    cycle: int
    metrics: dict  # this cycle's metrics
    results: dict  # the run's results.json, or what --config gave: config (resolved), optional splits
    config_from: Path  # the file the config was read from (named in errors)

    @property
    def config(self) -> dict:
        return self.results["config"]


# A cycle directory alone (a Ray Train checkpoint, a copied cycle) holds weights and metrics, not the config that
# names its layer and dataset; without it the export would say `hook_name: null`, so it is refused.
NEEDS_CONFIG = ("pass --config with the run's results.json or its config YAML (a sweep's best_config.yaml), so the "
                "export names the SAE's layer (hook_name) and dataset")


def read_run_config(path: str | Path) -> dict:
    """--config: a run's results.json (its config and splits) or a config file as `python -m saeception.run
    --config` reads it (YAML or JSON, nested or dotted keys), resolved and validated. Raises ExportError."""
    try:
        data = read_yaml(path)
        splits = {}
        if "config" in data and "cycles" in data:  # a run's results.json
            data, splits = data["config"], data.get("splits") or {}
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: its config must be a mapping of config keys")
        return {"config": to_dict(build_config(data)), "splits": splits}
    except ConfigError as e:
        raise ExportError(str(e) if str(e).startswith("--config") else f"--config {path}: {e}") from e


def resolve_source(path: str | Path, cycle: int | None = None, config: str | Path | None = None) -> Source:
    """A run directory (its last complete cycle, or `cycle`) or one cycle's directory, verified
    against its manifest, with the run's config: `config` (read_run_config) when given, else the run's
    results.json, which must hold this cycle. Raises ExportError."""
    root = Path(path)
    if not root.is_dir():
        raise ExportError(f"{root}: must be a run directory or a cycle directory (not found)")
    single = CycleDir(root)
    if single.manifest.exists() or single.metrics.exists() or single.sae.with_suffix(".json").exists():
        if cycle is not None:
            raise ExportError(f"--cycle: only with a run directory; {root} is one cycle's directory")
        cycle_dir, run = single, ChainPaths(root.parent)
    else:
        run = ChainPaths(root)
        present = []
        while run.cycle(len(present)).path.is_dir():
            present.append(len(present))
        if not present:
            raise ExportError(f"{root}: must be a run directory (results.json + cycle directories) or a cycle directory")
        if cycle is None:
            complete = [c for c in present if run.cycle(c).manifest.exists()]
            if not complete:
                raise ExportError(f"{root}: no complete cycle to export (no cycle has its manifest)")
            cycle = complete[-1]
        elif cycle not in present:
            raise ExportError(f"--cycle: must be one of {present}, got {cycle}")
        cycle_dir = run.cycle(cycle)
    problem = cycle_dir.verify()
    if problem:
        raise ExportError(f"{problem}; only an intact cycle is exported")
    history = json.loads(cycle_dir.metrics.read_text())["cycles"]
    if config is not None:
        return Source(cycle_dir, int(history[-1]["cycle"]), history[-1], read_run_config(config), Path(config))
    if not run.results().exists():
        raise ExportError(f"--config: {cycle_dir.path} has no results.json beside it; {NEEDS_CONFIG}")
    results = json.loads(run.results().read_text())
    if history[-1] not in results.get("cycles", []):
        # A results.json that does not hold this cycle belongs to another run: its config would mislabel the export.
        raise ExportError(f"--config: {run.results()} does not hold cycle {history[-1]['cycle']} of {cycle_dir.path} "
                          f"(another run's); {NEEDS_CONFIG}")
    return Source(cycle_dir, int(history[-1]["cycle"]), history[-1], results, run.results())


def check_config(src: Source, model_name: str, sae: SAE) -> None:
    """The config must be this cycle's run's: another run's would mislabel the export. Raises ExportError."""
    try:
        cfg = build_config(src.config)
    except ConfigError as e:
        raise ExportError(f"{src.config_from}: {e}") from e
    found = {"model.name": (cfg.model.name, model_name), "sae.kind": (cfg.sae.kind, sae.kind), "sae.k": (cfg.sae.k, sae.k),
             "sae.expansion_factor": (cfg.sae.n_latents(sae.d), sae.n_latents)}
    for key, (says, holds) in found.items():
        if says != holds:
            what = f"gives {says} latents" if key == "sae.expansion_factor" else f"is {says!r}"
            raise ExportError(f"{src.config_from}: {key} {what}, but {src.cycle_dir.path} holds "
                              f"{holds!r}{' latents' if key == 'sae.expansion_factor' else ''}; the config must be this run's")


# --------------------------------------------------------------------------------------------------
# The classifier, rebuilt from the cycle's state dict


def _mlp_dims(tensors: dict[str, Tensor]) -> tuple[int, list[int], int]:
    """(input_dim, hidden_sizes, n_classes) of a saved saeception MLP."""
    hidden = []
    while f"hidden.{len(hidden)}.0.weight" in tensors:
        hidden.append(tensors[f"hidden.{len(hidden)}.0.weight"])
    return int(hidden[0].shape[1]), [int(w.shape[0]) for w in hidden], int(tensors["head.weight"].shape[0])


def build_classifier(name: str, tensors: dict[str, Tensor], device: str = "cpu") -> nn.Module:
    """The cycle's classifier with its weights; device "meta" builds the structure only (cheap: for
    layer names). Raises ExportError when the model's source cannot be read."""
    if name == "mlp":
        model = MLP(*_mlp_dims(tensors))
        load_state_strict(model, tensors)
        return model
    from transformers import (  # lazy: transformers only for Hugging Face models
        AutoConfig,
        AutoModelForSequenceClassification,
    )

    try:
        config = AutoConfig.from_pretrained(model_source(name))
    except (OSError, ValueError, ConfigError) as e:
        raise ExportError(f"model.name: cannot read {name!r} to rebuild the classifier ({e})") from e
    # The label count is not stored; the head is the only tensor whose shape follows it.
    with torch.device("meta"):
        probe = AutoModelForSequenceClassification.from_config(config)
    for key, t in probe.state_dict().items():
        if key in tensors and tensors[key].shape != t.shape:
            config.num_labels = int(tensors[key].shape[0])
            break
    if device == "meta":
        with torch.device("meta"):
            return AutoModelForSequenceClassification.from_config(config)
    model = AutoModelForSequenceClassification.from_config(config)
    dtype = next(t.dtype for t in tensors.values() if t.is_floating_point())
    model.to(dtype)
    load_state_strict(model, tensors)
    return model.eval()


@dataclass
class Target:
    """Where the SAE reads: the tapped module and which of its outputs it was trained on."""

    model_name: str  # as model.json records it: "mlp", a hub id or a directory
    hook_name: str  # the tapped module in the classifier as saeception builds it
    text: bool
    pooling: str | None = None  # "last"/"first"/"mean" for text models; None for the MLP
    every_token: bool = False  # sae.tokens "all": trained on every real token, not the pooled one
    base_prefix: str | None = None  # the HF wrapper's base_model_prefix ("transformer" for GPT-2)
    tl_hook_name: str | None = None  # the same point as a TransformerLens hook (blocks.L.hook_resid_post), where one is

    @property
    def saelens_hook(self) -> tuple[str, str | None]:
        """(hook_name, model_class_name) for SAELens' metadata: the TransformerLens hook and `HookedTransformer`
        where the tapped layer has one (SAELens' and SAEBench's default path), else the PyTorch module name."""
        return (self.tl_hook_name, "HookedTransformer") if self.tl_hook_name else (self.hook_name, None)

    @property
    def base_hook_name(self) -> str:
        """The tapped module's name in the base model (AutoModel: `h.1` for GPT-2's `transformer.h.1`), the
        hookpoint sparsify and other tools that load the base model name a layer by (sparsify keeps one folder
        per hookpoint, named so: SparseCoder.load_many)."""
        if self.base_prefix and self.hook_name.startswith(self.base_prefix + "."):
            return self.hook_name[len(self.base_prefix) + 1:]
        return self.hook_name

    def reads(self) -> str:
        where = f"`{self.hook_name}`"
        if self.every_token:
            return f"{where}, every real token"
        pooled = {"last": "last real token", "first": "first token", "mean": "mean over real tokens"}
        return f"{where}, {pooled[self.pooling]} per example" if self.pooling else where


def resolve_target(src: Source, model_name: str, model: nn.Module) -> Target:
    text, cfg = not isinstance(model, MLP), src.config
    tap = TapModel(model, cfg["model"]["layer"], cfg["model"]["pooling"])
    return Target(model_name, tap.target_name, text, tap.pooling if text else None, text and cfg["sae"]["tokens"] == "all",
                  getattr(model, "base_model_prefix", None) if text else None, tl_hook(model, tap.target) if text else None)


# Decoder architectures whose HF block output is TransformerLens' `blocks.L.hook_resid_post` (the residual stream
# after block L; HookedTransformer converts these from Hugging Face).
TL_RESID_TYPES = ("gpt2", "gpt_neox", "llama")


def tl_hook(model: nn.Module, target: nn.Module) -> str | None:
    """`blocks.L.hook_resid_post` when the tapped module is block L of a TL_RESID_TYPES model, else None."""
    if getattr(getattr(model, "config", None), "model_type", None) not in TL_RESID_TYPES:
        return None
    blocks = list(block_list(model))
    return f"blocks.{blocks.index(target)}.hook_resid_post" if target in blocks else None


# --------------------------------------------------------------------------------------------------
# Writers: each writes into a fresh directory


def folded_weights(sae: SAE) -> dict[str, Tensor]:
    """W_enc (d, n), b_enc (n), W_dec (n, d) with unit rows, b_dec (d), and the inference threshold (a scalar;
    per latent for JumpReLU) with input_scale folded into the biases and the threshold (module docstring); in
    float64, so the fold adds no rounding beyond the final cast."""
    s = sae.input_scale.double()
    return {"W_enc": sae.W_enc.float().contiguous(), "b_enc": (sae.b_enc.double() * s).float().contiguous(),
            "W_dec": sae.W_dec.float().contiguous(), "b_dec": (sae.b_dec.double() * s).float().contiguous(),
            "threshold": (sae.threshold.double() * s).float()}


def write_saelens(sae: SAE, src: Source, target: Target, out: Path) -> None:
    tensors = folded_weights(sae)
    threshold = tensors.pop("threshold")
    cfg = src.config
    metadata = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": None,  # not trained by SAELens
        "model_name": target.model_name,
        "hook_name": target.saelens_hook[0],
        "model_class_name": target.saelens_hook[1],
        # TransformerLens' default weight processing centres the residual stream, which the SAE never saw.
        "model_from_pretrained_kwargs": {"center_writing_weights": False} if target.tl_hook_name else None,
        "hook_head_index": None,
        "dataset_path": cfg["data"]["name"],
        "context_size": cfg["data"]["max_length"] if target.text else None,
        "saeception": {"kind": sae.kind, "cycle": src.cycle, "input_scale_folded": float(sae.input_scale),
                       "module": target.hook_name,  # the tapped module's name in the classifier (PyTorch)
                       "codes": "input_scale x saeception's codes (the scale folded into the biases; unit decoder rows)",
                       "pooling": None if target.every_token else target.pooling, "every_token": target.every_token},
    }
    config = {"architecture": SAELENS_ARCHITECTURE[sae.kind], "d_in": sae.d, "d_sae": sae.n_latents,
              "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
              "normalize_activations": "none", "reshape_activations": "none", "metadata": metadata}
    if sae.kind == "topk":
        # rescale_acts_by_decoder_norm stays off: TopK selects on the pre-activations themselves.
        config.update(k=sae.k, rescale_acts_by_decoder_norm=False)
    if SAELENS_ARCHITECTURE[sae.kind] == "jumprelu":  # per latent: BatchTopK's one threshold for every latent
        tensors["threshold"] = threshold.expand(sae.n_latents).contiguous()
    out.mkdir(parents=True)
    save_tensors(tensors, str(out / "sae_weights.safetensors"))
    write_json(out / "cfg.json", config)
    if bool((sae.firing_density >= 0).all()):  # unknown (-1) for an SAE saved before saeception kept it
        # SAELens' own file (SAELens' trainer, SAEBench, Neuronpedia): log10 of each latent's firing density.
        save_tensors({"sparsity": torch.log10(sae.firing_density.float() + SPARSITY_EPS).contiguous()},
                  str(out / SAELENS_SPARSITY))


def write_sparsify(sae: SAE, out: Path) -> None:
    w = folded_weights(sae)
    tensors = {"encoder.weight": w["W_enc"].t().contiguous(), "encoder.bias": w["b_enc"],
               "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    config = {"activation": "topk", "expansion_factor": max(1, sae.n_latents // sae.d), "num_latents": sae.n_latents,
              "k": sae.k, "normalize_decoder": True,  # saeception's unit-norm rows, kept by the fold
              "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": sae.d}
    out.mkdir(parents=True)
    save_tensors(tensors, str(out / "sae.safetensors"))
    write_json(out / "cfg.json", config)


def write_hf(model: nn.Module, src: Source, target: Target, out: Path) -> None:
    out.mkdir(parents=True)
    if isinstance(model, MLP):
        input_dim, hidden, n_classes = _mlp_dims(model.state_dict())
        save_tensors({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
        write_json(out / "config.json", {"architecture": "saeception.MLP", "input_dim": input_dim,
                                         "hidden_sizes": hidden, "n_classes": n_classes, "tapped_layer": target.hook_name})
        # A standalone copy (torch + safetensors only), so the export loads without saeception.
        shutil.copyfile(mlp_loader.__file__, out / "mlp.py")
        return
    tok = load_tokenizer(ModelConfig(name=target.model_name), src.config["data"]["padding_side"])
    if model.config.pad_token_id is None:  # as build_model sets it: the classifier needs it to find the last token
        model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)


# --------------------------------------------------------------------------------------------------
# The model card


def _cell(v) -> str:
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.4f}"
    return "-" if v is None else str(v)


def _table(rows: list[tuple], header: tuple) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)])


SUMMARY_KEYS = ("seed", "data.name", "model.name", "model.layer", "model.hidden_sizes", "model.pooling",
                "finetune.epochs", "sae.kind", "sae.expansion_factor", "sae.k", "sae.l1_coefficient", "sae.steps",
                "sae.tokens", "sharpen.strategy", "sharpen.top_k_pct", "aux.weight", "aux.epochs", "chain.cycles")


def read_latents(path: Path) -> dict:
    """A cycle's latents.json, checked for what render_html reads. Raises ExportError."""
    try:
        data = json.loads(path.read_text())
        missing = [e["id"] for d in data["latents"] for e in (*d["top"], *d.get("range", ())) if str(e["id"]) not in data["examples"]]
        # min_firings (the count applied) is in every file; min_firing_rate only since eval.min_firing_rate.
        fields = {"kind", "score", "score_doc", "eligible", "min_firings", "n_examples", "n_latents_total"} - set(data)
    except (ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{path}: not a latent browser file written by this saeception ({type(e).__name__}: {e})") from e
    if missing or fields:
        raise ExportError(f"{path}: not a latent browser file written by this saeception (lacks "
                          + (f"examples {missing[:3]}" if missing else ", ".join(sorted(fields))) + ")")
    return data


def model_card(src: Source, sae: SAE, target: Target, files: dict[str, str], card_extra: dict[str, str] | None = None) -> str:
    """The README.md beside the exports; files: {format: path relative to the card}."""
    cfg = src.config
    parts = [f"---\ntags: [saeception, sparse-autoencoder]\n---\n\n# SAE-ception export: {target.model_name}, cycle {src.cycle}\n",
             f"Exported from `{src.cycle_dir.path}`. A {sae.kind} SAE with {sae.n_latents} latents on the "
             f"{sae.d}-dimensional output of {target.reads()}, and the classifier it was trained on.\n",
             # From the data code itself (saeception.data.tasks.describe_inputs), so the card cannot drift from it.
             f"## Inputs\n\nThe classifier was trained, and the SAE's activations taken, on {describe_inputs(build_config(cfg).data)}. "
             "Prepare inputs the same way: the layer's activations, and so the SAE's latents, depend on it.\n"]
    flat = flatten(cfg)
    parts.append("## The run\n\n" + _table([(f"`{k}`", flat[k] if isinstance(flat[k], str) else json.dumps(flat[k])) for k in SUMMARY_KEYS if k in flat], ("key", "value"))
                 + (f"\n\nConfig from `{src.config_from}`." if src.config_from.name != "results.json" else "")
                 + "\n\n<details><summary>Full resolved config</summary>\n\n```json\n"
                 + json.dumps(cfg, indent=2) + "\n```\n</details>\n")
    metrics = [(f"`{k}`", v) for k, v in src.metrics.items() if k != "cycle"]
    parts.append(f"## Metrics of cycle {src.cycle}\n\n" + _table(metrics, ("metric", "value")) + "\n")
    splits = (src.results or {}).get("splits")
    if splits:
        parts.append("## Data splits\n\n" + _table([(s, v.get("n"), f"`{v.get('ids_sha256')}`") for s, v in splits.items()],
                                                   ("split", "examples", "ids_sha256")) + "\n")
    parts.append("## Files and how to load them\n\n" + _loading(files, sae, target))
    for title, body in (card_extra or {}).items():
        parts.append(f"## {title}\n\n{body.strip()}\n")
    return "\n".join(parts)


def _loading(rel: dict[str, str], sae: SAE, target: Target) -> str:
    acts = f"acts = ...  # (N, {sae.d}) float32 outputs of " + target.reads().replace("`", "")
    text = []
    if "saelens" in rel or "sparsify" in rel:
        text.append(f"The SAE exports have `input_scale` ({float(sae.input_scale):.6g}) folded into their biases: they "
                    "read the layer's raw activations, keep saeception's unit-norm decoder rows, and give saeception's "
                    "reconstructions with codes `input_scale` times saeception's (the same latents fire).\n")
        hook, model_class = target.saelens_hook
        if model_class:
            text.append(f"SAELens' `hook_name` is `{hook}`, the TransformerLens hook at the tapped module `{target.hook_name}` "
                        "(the residual stream after that block), so `sae_lens.HookedSAETransformer` splices it in by name; "
                        f"the PyTorch module is `metadata.saeception.module`. It reads the activations of *this* "
                        "classifier's weights (fine-tuned, and retrained after cycle 0), not the base model's that "
                        "`model_name` names: load them into TransformerLens (`hf_model=`) with "
                        "`center_writing_weights=False` (`metadata.model_from_pretrained_kwargs`)." + (
                            " The SAE was trained on one pooled token per example; in TransformerLens it runs on every "
                            "token." if not target.every_token else "") + "\n")
        else:
            text.append(f"SAELens' `hook_name` is the PyTorch module name `{target.hook_name}` (no TransformerLens hook "
                        "for this model).\n")
    if "saelens" in rel:
        arch = SAELENS_ARCHITECTURE[sae.kind]
        note = " (BatchTopK's inference threshold as a per-latent JumpReLU threshold)" if sae.kind == "batchtopk" else ""
        text.append(f"`{rel['saelens']}/` — SAELens `{arch}` SAE{note}:\n\n```python\nfrom sae_lens import SAE\n"
                    f"sae = SAE.load_from_disk(\"{rel['saelens']}\", device=\"cpu\")\n{acts}\n"
                    "codes = sae.encode(acts); recon = sae.decode(codes)\n```\n")
    if "sparsify" in rel:
        text.append(f"`{rel['sparsify']}/` — EleutherAI sparsify TopK SAE (k={sae.k}):\n\n```python\n"
                    f"from sparsify import SparseCoder\nsae = SparseCoder.load_from_disk(\"{rel['sparsify']}\")\n{acts}\n"
                    "top_acts, top_indices, _ = sae.encode(acts); recon = sae.decode(top_acts, top_indices)\n```\n\n"
                    f"The folder is named after the hookpoint, `{target.base_hook_name}` (the tapped module in the base "
                    "model), as sparsify lays out one SAE per hookpoint: `SparseCoder.load_many(\"sparsify\", local=True)` "
                    f"gives `{{\"{target.base_hook_name}\": sae}}`.\n")
    elif sae.kind != "topk":
        text.append(f"No sparsify export: sparsify holds TopK SAEs only, and this one is `{sae.kind}`.\n")
    if "browser" in rel:
        text.append(f"`{rel['browser']}` — the latent browser: a static page (open it in a browser, offline) with the "
                    "top latents' top-activating test examples, firing density, firings per class, CSI and U.\n")
    if "hf" in rel and not target.text:
        text.append(f"`{rel['hf']}/` — the MLP classifier (safetensors + config.json; `mlp.py` loads it with torch only):"
                    f"\n\n```python\nimport sys; sys.path.insert(0, \"{rel['hf']}\")\nfrom mlp import load_mlp\n"
                    f"model = load_mlp(\"{rel['hf']}\")\nlogits = model(features)  # (B, input_dim) float32, prepared as Inputs says"
                    "\n```\n")
    elif "hf" in rel:
        text.append(f"`{rel['hf']}/` — the classifier and its tokenizer:\n\n```python\n"
                    "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
                    f"model = AutoModelForSequenceClassification.from_pretrained(\"{rel['hf']}\")\n"
                    f"tok = AutoTokenizer.from_pretrained(\"{rel['hf']}\")\n"
                    + f"model.get_submodule(\"{target.hook_name}\").register_forward_hook(lambda m, i, o: ...)  # o, or o[0] if a tuple: the SAE's input\n"
                    + "```\n")
    return "\n".join(text)


# --------------------------------------------------------------------------------------------------
# Export


def _choose_formats(requested: list[str] | None, kind: str) -> list[str]:
    for f in requested or []:
        if f not in FORMATS:
            raise ExportError(f"--format: must be one of {', '.join(FORMATS)}, got {f!r}")
    if not requested:
        return [f for f in FORMATS if f != "sparsify" or kind == "topk"]
    if "sparsify" in requested and kind != "topk":
        raise ExportError(f"sae.kind: sparsify holds TopK SAEs only; this SAE is {kind!r} (export it with --format saelens)")
    return list(dict.fromkeys(requested))


def export_run(run_dir: str | Path, out_dir: str | Path, formats: list[str] | None = None, cycle: int | None = None,
               card_extra: dict[str, str] | None = None, force: bool = False, config: str | Path | None = None) -> dict[str, Path]:
    """Exports one cycle of a run (its last complete cycle unless `cycle`) or one cycle directory into
    `out_dir`: formats from FORMATS (default: all that apply to the SAE's kind) plus the model card.
    card_extra: more card sections, title -> markdown. config: the run's results.json or config file, for a cycle
    without its run's results.json beside it (a checkpoint; refused otherwise). Returns {format or "card": path}.

    Every input is checked before anything is written (ExportError otherwise); the files are built in a
    staging directory inside out_dir and moved into place at the end, so a failed build leaves no partial
    files. An out_dir that is not empty is refused unless `force`, which replaces only the names this
    export writes (README.md, latents.html, saelens/, sparsify/, classifier/). The latent browser
    (latents.html) comes with every export of a cycle that has its data (latents.json)."""
    src = resolve_source(run_dir, cycle, config)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out: {out} is a file; must be a new or empty directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"--out: {out} is not empty; must be a new or empty directory (or pass --force)")
    try:
        sae, (tensors, meta) = SAE.load(src.cycle_dir.sae), load_weights(src.cycle_dir.model)
    except (KeyError, ValueError) as e:  # e.g. another format_version
        raise ExportError(f"{src.cycle_dir.path}: unreadable artifacts ({e}); must be written by this saeception") from e
    check_config(src, meta["name"], sae)
    chosen = _choose_formats(formats, sae.kind)
    model = build_classifier(meta["name"], tensors, device="cpu" if "hf" in chosen else "meta")
    target = resolve_target(src, meta["name"], model)

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        written: dict[str, Path] = {}
        if "saelens" in chosen:
            write_saelens(sae, src, target, stage / SAELENS_DIR)
            written["saelens"] = out / SAELENS_DIR
        if "sparsify" in chosen:
            hookpoint = target.base_hook_name  # sparsify names each SAE's directory after its hookpoint
            write_sparsify(sae, stage / SPARSIFY_DIR / hookpoint)
            written["sparsify"] = out / SPARSIFY_DIR / hookpoint
        if "hf" in chosen:
            write_hf(model, src, target, stage / HF_DIR)
            written["hf"] = out / HF_DIR
        if src.cycle_dir.latents.exists():
            (stage / BROWSER).write_text(render_html(read_latents(src.cycle_dir.latents),
                                                     f"Latents of {target.model_name}, cycle {src.cycle}"))
            written["browser"] = out / BROWSER
        card = model_card(src, sae, target, {k: v.relative_to(out).as_posix() for k, v in written.items()}, card_extra)
        (stage / CARD).write_text(card)
        written["card"] = out / CARD
        for entry in sorted(stage.iterdir()):
            dest = out / entry.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            elif dest.exists() or dest.is_symlink():
                dest.unlink()
            os.replace(entry, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    stage.rmdir()
    log.info("exported cycle %d of %s to %s (%s)", src.cycle, run_dir, out, ", ".join(written))
    return written


# --------------------------------------------------------------------------------------------------
# CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line, like every other bad input (argparse would print the usage too).
        self.exit(2, f"error: {message}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m saeception.export",
                description="Export a chain's SAE (SAELens, sparsify) and classifier (Hugging Face) with a model card.")
    p.add_argument("source", metavar="RUN_OR_DIR", help="a run directory (python -m saeception.run --out) or one cycle directory")
    p.add_argument("--out", required=True, help="output directory (new or empty)")
    p.add_argument("--format", dest="formats", action="append", metavar="FORMAT",
                   help=f"one of {', '.join(FORMATS)} (repeatable; default: all that apply to the SAE)")
    p.add_argument("--cycle", type=int, help="which cycle of a run (default: its last complete cycle)")
    p.add_argument("--config", metavar="FILE", help="the run's results.json or config YAML, for a cycle directory without "
                   "its run's results.json beside it (a checkpoint)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out, replacing earlier exports there")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        written = export_run(args.source, args.out, args.formats, args.cycle, force=args.force, config=args.config)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for what, path in written.items():
        print(f"{what}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
