"""The latent browser's data: for the top latents by a chosen score (`browser.score`), their top-activating
test examples, firing density, class histogram, CSI and U. The chain computes it at every cycle from the test
codes (`latents.json` in the cycle directory); `saeception.export` renders it as `latents.html`."""

from __future__ import annotations

import base64
import html
import math
import struct
import zlib
from typing import Any

import torch
from torch import Tensor

from saeception.config import BROWSER_SCORES as SCORES
from saeception.eval.metrics import csi_per_latent, min_firings_for, u_per_latent


@torch.no_grad()
def latent_summary(codes: Tensor, labels: Tensor, n_classes: int, n_latents: int = 32, n_examples: int = 8,
                   score: str = "csi", min_firing_rate: float = 0.0) -> dict[str, Any]:
    """codes (N, n_latents) of the test split (row = example id), labels (N,). The `n_latents` latents firing
    on at least min_firings_for(N, min_firing_rate) examples (recorded as `min_firings`) with the highest
    `score`, each with its density, firing count, CSI, U, largest activation, firings per class and its
    `n_examples` top-activating examples (id, activation, label; only examples it fires on). JSON-ready."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    n = len(labels)
    fires = codes > 0
    firings = fires.sum(0)
    min_firings = min_firings_for(n, min_firing_rate)
    eligible = firings >= min_firings
    csi, u = csi_per_latent(codes, labels, n_classes), u_per_latent(codes, labels, n_classes)
    peak = codes.max(0).values.double() if n else torch.zeros(codes.shape[1], dtype=torch.float64)
    values = {"csi": csi, "u": u, "density": firings.double() / max(n, 1), "max": peak}[score]
    ranked = torch.where(eligible, values.double(), torch.full_like(values.double(), -torch.inf))
    chosen = ranked.argsort(descending=True, stable=True)[:min(n_latents, int(eligible.sum()))]
    onehot = torch.nn.functional.one_hot(labels.long(), n_classes).double()
    per_class = (onehot.t() @ fires[:, chosen].double()).long()  # (C, chosen)
    top_values, top_ids = codes[:, chosen].float().topk(min(n_examples, n), dim=0)  # (n_examples, chosen)
    latents = []
    for j, latent in enumerate(chosen.tolist()):
        top = [{"id": int(i), "activation": float(v), "label": int(labels[i])}
               for v, i in zip(top_values[:, j].tolist(), top_ids[:, j].tolist()) if v > 0]
        latents.append({"latent": latent, "score": float(values[latent]), "firings": int(firings[latent]),
                        "density": float(firings[latent]) / max(n, 1), "csi": float(csi[latent]), "u": float(u[latent]),
                        "max": float(peak[latent]), "class_firings": per_class[:, j].tolist(), "top": top})
    return {"score": score, "score_doc": SCORES[score], "min_firing_rate": min_firing_rate, "min_firings": min_firings,
            "n_examples": n, "n_classes": n_classes, "eligible": int(eligible.sum()),
            "n_latents_total": int(codes.shape[1]), "latents": latents}


def example_ids(summary: dict[str, Any]) -> list[int]:
    """The test example ids the summary shows, sorted."""
    return sorted({e["id"] for latent in summary["latents"] for e in latent["top"]})


# --------------------------------------------------------------------------------------------------
# latents.html: one static page (no script, no network), every example inline


def _png(gray: list[list[int]]) -> bytes:
    """An 8-bit grayscale PNG of the rows `gray` (values 0..255)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(row) for row in gray)
    header = struct.pack(">IIBBBBB", len(gray[0]), len(gray), 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _features(values: list[float]) -> str:
    """A feature vector as an image when it is square (8 x 8 digits: ink dark), else its first values."""
    values = [v if math.isfinite(v) else 0.0 for v in values]
    side = math.isqrt(len(values))
    if side > 1 and side * side == len(values):
        lo, hi = min(values), max(values)
        scale = 255 / (hi - lo) if hi > lo else 0.0
        gray = [[255 - round((values[r * side + c] - lo) * scale) for c in range(side)] for r in range(side)]
        data = base64.b64encode(_png(gray)).decode()
        return f'<img class="image" alt="example" width="{8 * side}" height="{8 * side}" src="data:image/png;base64,{data}">'
    shown = ", ".join(f"{v:.3g}" for v in values[:16])
    return f'<span class="text">[{html.escape(shown)}{", …" if len(values) > 16 else ""}]</span>'


def _example(kind: str, content: Any) -> str:
    if kind == "text":
        return f'<span class="text">{html.escape(str(content))}</span>'
    return _features([float(v) for v in content])


STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:70em}
nav a{margin-right:.6em}.latent{border-top:1px solid #ccc;padding:.6em 0}
table.stats td,table.stats th{padding:0 .8em 0 0;text-align:left}
.hist{display:flex;gap:3px;margin:.4em 0}.col{display:flex;flex-direction:column;align-items:center;width:18px}
.well{height:60px;width:14px;display:flex;align-items:flex-end}.bar{background:#4a7bd0;width:14px;min-height:1px}
.col small{color:#666;font-size:10px}.example{margin:.2em 0}
ol.features{display:flex;flex-wrap:wrap;gap:.4em 1.2em;list-style:none;padding:0}
.act{font-family:monospace;margin-right:.6em}.label{color:#666;margin-right:.6em}
img.image{image-rendering:pixelated;border:1px solid #ccc;vertical-align:middle}"""


def render_html(summary: dict[str, Any], title: str) -> str:
    """The latent browser page for a latent_summary (with its `kind` and `examples`)."""
    esc = html.escape
    latents = summary["latents"]
    # Files written before eval.min_firing_rate hold only the count.
    rate = f" (a share of {float(summary['min_firing_rate']):g}, rounded up)" if "min_firing_rate" in summary else ""
    head = (f"<p>{len(latents)} of the {int(summary['eligible'])} latents (of {int(summary['n_latents_total'])}) that fire "
            f"on at least {int(summary['min_firings'])} of the {int(summary['n_examples'])} test examples{rate}, ordered by "
            f"<b>{esc(summary['score'])}</b> ({esc(summary['score_doc'])}). Per latent: its firing density, CSI, U, "
            "firings per class (bars, by class index), and its top-activating test examples (activation, label).</p>")
    nav = "<nav>" + "".join(f'<a href="#latent-{int(d["latent"])}">{int(d["latent"])}</a>' for d in latents) + "</nav>"
    sections = []
    for d in latents:
        # Numbers as numbers: a hand-edited file cannot put markup into the page through them.
        d = {**d, "latent": int(d["latent"]), "firings": int(d["firings"]),
             "class_firings": [int(n) for n in d["class_firings"]],
             "top": [{"id": int(e["id"]), "activation": float(e["activation"]), "label": int(e["label"])} for e in d["top"]]}
        stats = "".join(f"<th>{k}</th><td>{v}</td>" for k, v in (
            (esc(summary["score"]) + " (rank)", f"{d['score']:.4g}"), ("density", f"{d['density']:.4f}"),
            ("firings", d["firings"]), ("CSI", f"{d['csi']:.3f}"), ("U", f"{d['u']:.3f}"), ("max", f"{d['max']:.4g}")))
        peak = max(d["class_firings"]) or 1
        bars = "".join(f'<div class="col" title="class {c}: {n} firings"><div class="well"><div class="bar" '
                       f'style="height:{100 * n / peak:.0f}%"></div></div><small>{c}</small></div>'
                       for c, n in enumerate(d["class_firings"]))
        examples = "".join(
            f'<li class="example" data-id="{e["id"]}"><span class="act">{e["activation"]:.4g}</span>'
            f'<span class="label">class {e["label"]}</span>{_example(summary["kind"], summary["examples"][str(e["id"])])}</li>'
            for e in d["top"])
        sections.append(f'<section class="latent" id="latent-{d["latent"]}" data-latent="{d["latent"]}">'
                        f'<h2>Latent {d["latent"]}</h2><table class="stats"><tr>{stats}</tr></table>'
                        f'<div class="hist" title="firings per class">{bars}</div>'
                        f'<ol class="examples {esc(summary["kind"])}">{examples}</ol></section>')
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>{esc(title)}</h1>{head}{nav}\n" + "\n".join(sections)
            + "\n</body></html>\n")
