"""The latent browser's data: every latent's firing count, ranking score, CSI and best match among the
previous cycle's latents (the index), and, for the top latents by a chosen score (`browser.score`), their
top-activating test examples and examples across their activation quartiles, activation histogram, class
histogram, CSI, U and class effect through a linear head. The chain computes it at every cycle from the
test codes (`latents.json` in the cycle directory); `saeception.export` renders it as `latents.html`."""

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

HIST_BINS = 16  # a latent's activation histogram: equal bins over (0, its largest activation]
QUARTILES = 4  # examples across the activation range: this many rank bins of the examples a latent fires on


def _g(x: float) -> float:
    """4 significant digits: the index holds one row per latent (6,144 and more), kept small."""
    return float(f"{x:.4g}")


def shrunk_csi(csi: Tensor, firings: Tensor, prior_firings: float) -> Tensor:
    """CSI × f / (f + prior_firings): CSI shrunk toward 0 as if each latent had also `prior_firings`
    unselective firings, so a latent needs support, not luck, to rank high. (n_latents,) float64."""
    f = firings.double()
    return csi.double() * f / (f + prior_firings)


@torch.no_grad()
def match_previous(w_dec: Tensor, w_prev: Tensor, block: int = 1024) -> tuple[Tensor, Tensor]:
    """For each decoder row of w_dec (n, d), the row of the previous cycle's decoder w_prev (m, d) it is
    closest to in direction, and that cosine: (n,) long, (n,) float. Blocks of rows keep memory at block × m."""
    if w_dec.ndim != 2 or w_prev.ndim != 2 or w_dec.shape[1] != w_prev.shape[1]:
        raise ValueError(f"decoders must be (n, d) and (m, d) with the same d, got {tuple(w_dec.shape)} and {tuple(w_prev.shape)}")
    a = torch.nn.functional.normalize(w_dec.float(), dim=1)
    b = torch.nn.functional.normalize(w_prev.float().to(a.device), dim=1)
    best = [(a[i:i + block] @ b.t()).max(1) for i in range(0, len(a), block)]
    return torch.cat([m.indices for m in best]), torch.cat([m.values for m in best])


def _quartile_examples(values: Tensor, labels: Tensor, per: int) -> list[dict[str, Any]]:
    """`per` examples from each quarter of the examples a latent fires on, ranked by activation (lowest
    quarter first), evenly spaced within it: what the latent does below its top."""
    fired = values.nonzero().squeeze(1)
    fired = fired[values[fired].argsort(stable=True)]
    f, out = len(fired), []
    for q in range(QUARTILES):
        lo, hi = q * f // QUARTILES, (q + 1) * f // QUARTILES
        for r in sorted({lo + (hi - lo) * (2 * k + 1) // (2 * per) for k in range(per)} if hi > lo else ()):
            i = int(fired[r])
            out.append({"id": i, "activation": float(values[i]), "label": int(labels[i]), "quartile": q + 1})
    return out


@torch.no_grad()
def latent_summary(codes: Tensor, labels: Tensor, n_classes: int, n_latents: int = 32, n_examples: int = 8,
                   score: str = "csi_shrunk", min_firing_rate: float = 0.0, prior_firings: float = 20.0,
                   effect: Tensor | None = None, effect_doc: str = "",
                   previous: tuple[int, Tensor, Tensor] | None = None,
                   train_density: Tensor | None = None) -> dict[str, Any]:
    """codes (N, n_latents) of the test split (row = example id), labels (N,). JSON-ready.

    `index`: per latent (all of them) its firings, `score`, CSI, rank among the eligible (null if not
    eligible), best previous-cycle match and its decoder cosine, training firing density. `latents`: the
    `n_latents` latents firing on at least min_firings_for(N, min_firing_rate) examples (`min_firings`) with
    the highest `score`, each with its density, firing count, CSI, U, largest activation, firings per class,
    activation histogram (HIST_BINS counts over (0, max]), its `n_examples` top-activating examples (`top`:
    id, activation, label; only examples it fires on), about as many across its activation quartiles
    (`range`), and its class effect. effect: (n_latents, n_classes) logit change per unit of code through a
    linear head, or None (effect_doc says what it is, or why there is none). previous: (the previous cycle,
    (n_latents,) index of each latent's best match there, its decoder cosine). train_density: the SAE's
    firing density on its training activations (SAE.firing_density; < 0 where unknown)."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    if prior_firings <= 0:
        raise ValueError(f"prior_firings must be > 0, got {prior_firings}")
    n, width = len(labels), codes.shape[1]
    if effect is not None and tuple(effect.shape) != (width, n_classes):
        raise ValueError(f"effect must be (n_latents, n_classes) = ({width}, {n_classes}), got {tuple(effect.shape)}")
    fires = codes > 0
    firings = fires.sum(0)
    min_firings = min_firings_for(n, min_firing_rate)
    eligible = firings >= min_firings
    csi, u = csi_per_latent(codes, labels, n_classes), u_per_latent(codes, labels, n_classes)
    peak = codes.max(0).values.double() if n else torch.zeros(width, dtype=torch.float64)
    values = {"csi_shrunk": shrunk_csi(csi, firings, prior_firings), "csi": csi, "u": u,
              "density": firings.double() / max(n, 1), "max": peak}[score].double()
    ranked = torch.where(eligible, values, torch.full_like(values, -torch.inf))
    order = ranked.argsort(descending=True, stable=True)[:int(eligible.sum())].cpu()
    chosen = order[:n_latents]
    labels_cpu = labels.long().cpu()
    onehot = torch.nn.functional.one_hot(labels.long(), n_classes).double()
    per_class = (onehot.t() @ fires[:, chosen.to(codes.device)].double()).long().cpu()  # (C, chosen)
    columns = codes[:, chosen.to(codes.device)].float().cpu()  # (N, chosen)
    top_values, top_ids = columns.topk(min(n_examples, n), dim=0)  # (n_examples, chosen)
    firings, csi, u, peak, values = (t.cpu() for t in (firings, csi, u, peak, values))
    rank = [None] * width
    for r, latent in enumerate(order.tolist()):
        rank[latent] = r + 1
    latents = []
    for j, latent in enumerate(chosen.tolist()):
        col = columns[:, j]
        top = [{"id": int(i), "activation": float(v), "label": int(labels_cpu[i])}
               for v, i in zip(top_values[:, j].tolist(), top_ids[:, j].tolist()) if v > 0]
        hist = (col[col > 0] / float(peak[latent]) * HIST_BINS).ceil().long().clamp(1, HIST_BINS) - 1
        d = {"latent": latent, "score": float(values[latent]), "firings": int(firings[latent]),
             "density": float(firings[latent]) / max(n, 1), "csi": float(csi[latent]), "u": float(u[latent]),
             "max": float(peak[latent]), "class_firings": per_class[:, j].tolist(), "top": top,
             "range": _quartile_examples(col, labels_cpu, max(1, n_examples // QUARTILES)),
             "hist": torch.bincount(hist, minlength=HIST_BINS).tolist()}
        if effect is not None:
            d["effect"] = [_g(v) for v in effect[latent].double().tolist()]
        if previous is not None:
            d["match"], d["match_cos"] = int(previous[1][latent]), float(previous[2][latent])
        latents.append(d)
    index: dict[str, Any] = {"firings": firings.tolist(), "score": [_g(v) for v in values.tolist()],
                             "csi": [_g(v) for v in csi.tolist()], "rank": rank}
    if previous is not None:
        index.update(match=previous[1].tolist(), match_cos=[_g(v) for v in previous[2].tolist()])
    if train_density is not None and bool((train_density >= 0).all()):
        index["train_density"] = [_g(v) for v in train_density.double().tolist()]
    return {"score": score, "score_doc": SCORES[score], "min_firing_rate": min_firing_rate, "min_firings": min_firings,
            "prior_firings": prior_firings, "n_examples": n, "n_classes": n_classes, "eligible": int(eligible.sum()),
            "n_latents_total": width, "effect_doc": effect_doc,
            "previous_cycle": previous[0] if previous is not None else None, "index": index, "latents": latents}


def example_ids(summary: dict[str, Any]) -> list[int]:
    """The test example ids the summary shows (top and across the range), sorted."""
    return sorted({e["id"] for latent in summary["latents"] for e in (*latent["top"], *latent.get("range", ()))})


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
img.image{image-rendering:pixelated;border:1px solid #ccc;vertical-align:middle}
.plots{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}.plot small{display:block;color:#666}
svg rect{fill:#4a7bd0}svg rect.neg{fill:#d0704a}svg rect.dead{fill:#999}svg line{stroke:#999}
svg text{font-size:9px;fill:#666}.note{color:#666}h3{font-size:1em;margin:.6em 0 .2em}
table.index{border-collapse:collapse;font-size:12px}table.index td,table.index th{padding:0 .7em 0 0;text-align:right}
table.index tr:target,.latent:target{background:#fff3c4}
.quartiles.features{display:flex;flex-wrap:wrap;gap:0 2em}.quartiles small{color:#666}"""

PLOT_H = 60


def _svg_bars(values: list[float], tips: list[str], axis: tuple[str, str] = ("", ""), bar: int = 10,
              dead: int | None = None) -> str:
    """Inline SVG bars, one per value (negative ones downward from a zero line), each with its tooltip; axis:
    the labels under the first and last bar; dead: the index of a bar drawn grey (never-firing latents)."""
    lo, hi = min(0.0, *values), max(0.0, *values)
    span = (hi - lo) or 1.0
    zero = PLOT_H * hi / span
    rects = []
    for i, (v, tip) in enumerate(zip(values, tips)):
        y, h = (zero - PLOT_H * v / span, PLOT_H * v / span) if v >= 0 else (zero, -PLOT_H * v / span)
        cls = ' class="neg"' if v < 0 else ' class="dead"' if i == dead else ""
        rects.append(f'<rect{cls} x="{i * (bar + 2)}" y="{y:.1f}" width="{bar}" height="{max(h, 0.5):.1f}">'
                     f"<title>{html.escape(tip)}</title></rect>")
    width = len(values) * (bar + 2)
    text = (f'<text x="0" y="{PLOT_H + 11}">{html.escape(axis[0])}</text>'
            f'<text x="{width}" y="{PLOT_H + 11}" text-anchor="end">{html.escape(axis[1])}</text>')
    return (f'<svg width="{width}" height="{PLOT_H + 13}" viewBox="0 0 {width} {PLOT_H + 13}" role="img">'
            f'<line x1="0" x2="{width}" y1="{zero:.1f}" y2="{zero:.1f}"/>{"".join(rects)}{text}</svg>')


def _density_plot(density: list[float], what: str) -> str:
    """The histogram of log10 firing density over latents (0.25 wide bins), never-firing latents apart."""
    alive = [math.log10(v) for v in density if v > 0]
    if not alive:
        return f'<div class="plot density">No latent fires ({what}).</div>'
    lo = math.floor(min(alive) * 4) / 4
    edges = [lo + k / 4 for k in range(max(1, math.ceil(-lo * 4)) + 1)]
    counts = [0] * (len(edges) - 1)
    for v in alive:
        counts[min(int((v - lo) * 4), len(counts) - 1)] += 1
    dead = len(density) - len(alive)
    tips = [f"never fires: {dead} latents"] + [f"10^{a:.2f} to 10^{b:.2f}: {c} latents" for a, b, c in zip(edges, edges[1:], counts)]
    return (f'<div class="plot density">{_svg_bars([float(dead), *map(float, counts)], tips, ("never", "1"), dead=0)}'
            f"<small>{html.escape(what)}: latents per bin of log10 firing density, from 10^{lo:g} to 1; "
            f"the grey bar: {dead} never fire</small></div>")


def _card(d: dict[str, Any], summary: dict[str, Any]) -> str:
    esc = html.escape
    # Numbers as numbers: a hand-edited file cannot put markup into the page through them.
    examples = [{"id": int(e["id"]), "activation": float(e["activation"]), "label": int(e["label"]),
                 "quartile": int(e.get("quartile", 0))} for e in d["top"] + d.get("range", [])]
    latent, firings, n = int(d["latent"]), int(d["firings"]), int(summary["n_examples"])
    stats = "".join(f"<th>{k}</th><td>{v}</td>" for k, v in (
        (esc(summary["score"]), f"{float(d['score']):.4g}"), ("density", f"{float(d['density']):.4f}"),
        ("firings", f"{firings} of {n}"), ("CSI", f"{float(d['csi']):.3f}"), ("U", f"{float(d['u']):.3f}"),
        ("max", f"{float(d['max']):.4g}"))) + (
        f"<th>rank</th><td>{int(summary['index']['rank'][latent])} of {int(summary['eligible'])}</td>" if "index" in summary else "")
    class_firings = [int(c) for c in d["class_firings"]]
    peak = max(class_firings) or 1
    bars = "".join(f'<div class="col" title="class {c}: {k} firings"><div class="well"><div class="bar" '
                   f'style="height:{100 * k / peak:.0f}%"></div></div><small>{c}</small></div>'
                   for c, k in enumerate(class_firings))
    plots = [f'<div class="plot classes"><div class="hist" title="firings per class">{bars}</div>'
             "<small>firings per class</small></div>"]
    if "hist" in d:
        counts, top = [int(c) for c in d["hist"]], float(d["max"])
        tips = [f"{top * i / len(counts):.3g} to {top * (i + 1) / len(counts):.3g}: {c} examples" for i, c in enumerate(counts)]
        plots.append(f'<div class="plot acts">{_svg_bars([float(c) for c in counts], tips, ("0", f"{top:.3g}"))}'
                     f"<small>activation histogram of its {firings} firings</small></div>")
    if "effect" in d:
        effect = [float(v) for v in d["effect"]]
        tips = [f"class {c}: {v:+.4g} logit per unit" for c, v in enumerate(effect)]
        up, down = max(range(len(effect)), key=effect.__getitem__), min(range(len(effect)), key=effect.__getitem__)
        plots.append(f'<div class="plot effect">{_svg_bars(effect, tips, ("class 0", f"class {len(effect) - 1}"), bar=14)}'
                     f"<small>class effect through the head: raises class {up} most ({effect[up]:+.3g}), "
                     f"lowers class {down} most ({effect[down]:+.3g})</small></div>")
    prev = ""
    if "match" in d:
        prev = (f'<p class="prev" data-match="{int(d["match"])}">Best match in cycle {int(summary["previous_cycle"])}: '
                f'latent {int(d["match"])}, decoder cosine {float(d["match_cos"]):.3f}</p>')

    def items(chosen: list[dict]) -> str:
        return "".join(
            f'<li class="example" data-id="{e["id"]}"><span class="act">{e["activation"]:.4g}</span>'
            f'<span class="label">class {e["label"]}</span>{_example(summary["kind"], summary["examples"][str(e["id"])])}</li>'
            for e in chosen)

    kind = esc(summary["kind"])
    body = f'<h3>Top activations</h3><ol class="examples top {kind}">{items([e for e in examples if not e["quartile"]])}</ol>'
    groups = [(q, [e for e in examples if e["quartile"] == q]) for q in range(1, QUARTILES + 1)]
    if any(chosen for _, chosen in groups):
        body += ('<h3>Across its activation range: examples from each quartile of its firings, lowest first</h3>'
                 f'<div class="quartiles {kind}">' + "".join(
                     f'<div><small>quartile {q}</small><ol class="examples range {kind}" data-quartile="{q}">{items(chosen)}</ol></div>'
                     for q, chosen in groups if chosen) + "</div>")
    return (f'<section class="latent" id="latent-{latent}" data-latent="{latent}">'
            f'<h2>Latent {latent} <small><a href="#i-{latent}">(index)</a></small></h2>'
            f'<table class="stats"><tr>{stats}</tr></table>{prev}<div class="plots">{"".join(plots)}</div>{body}</section>')


def _index(summary: dict[str, Any], carded: set[int]) -> str:
    """One row per latent, by latent number, each with its anchor (#i-N) and a link to its card if it has one."""
    ix, n = summary["index"], int(summary["n_examples"])
    cols = ["latent", "firings", "density", html.escape(summary["score"]), "CSI", "rank"]
    match = "match" in ix
    if match:
        cols += [f"match in cycle {int(summary['previous_cycle'])}", "cosine"]
    rows = []
    for i, f in enumerate(ix["firings"]):
        name = f'<a href="#latent-{i}">{i}</a>' if i in carded else str(i)
        rank = ix["rank"][i]
        cells = [name, str(int(f)), f"{int(f) / max(n, 1):.4f}", f"{float(ix['score'][i]):.4g}", f"{float(ix['csi'][i]):.3f}",
                 "" if rank is None else str(int(rank))]
        if match:
            cells += [str(int(ix["match"][i])), f"{float(ix['match_cos'][i]):.3f}"]
        rows.append(f'<tr id="i-{i}"><td>' + "</td><td>".join(cells) + "</td></tr>")
    return ('<h2 id="index">Every latent</h2><p class="note">All latents by number (link to one as '
            "<code>latents.html#i-N</code>); rank is by the score among latents firing often enough; the number links to "
            "the latent's card where it has one.</p><table class=\"index\"><tr>" + "".join(f"<th>{c}</th>" for c in cols)
            + "</tr>" + "".join(rows) + "</table>")


def render_html(summary: dict[str, Any], title: str) -> str:
    """The latent browser page for a latent_summary (with its `kind` and `examples`). Files written before a
    part existed (the index, histograms, quartile examples, class effect, previous match) render without it."""
    esc = html.escape
    latents = summary["latents"]
    # Files written before eval.min_firing_rate hold only the count.
    rate = f" (a share of {float(summary['min_firing_rate']):g}, rounded up)" if "min_firing_rate" in summary else ""
    prior = (f" with <code>browser.prior_firings</code> = {float(summary['prior_firings']):g}"
             if summary["score"] == "csi_shrunk" and "prior_firings" in summary else "")
    head = (f"<p>{len(latents)} of the {int(summary['eligible'])} latents (of {int(summary['n_latents_total'])}) that fire "
            f"on at least {int(summary['min_firings'])} of the {int(summary['n_examples'])} test examples{rate}, ordered by "
            f"<b>{esc(summary['score'])}</b> ({esc(summary['score_doc'])}{prior}). Per latent: its firing density, CSI, U, "
            "firings per class (bars, by class index), activation histogram, class effect through the head, best match "
            "in the previous cycle, its top-activating test examples and examples from each quartile of its firings "
            "(activation, label). Hover a bar for its numbers. "
            + ('Every latent has a row in <a href="#index">the index</a>.' if "index" in summary else "") + "</p>")
    notes = []
    if "effect_doc" in summary:
        notes.append("Class effect: " + (esc(summary["effect_doc"]) if latents and "effect" in latents[0]
                                          else "not shown: " + esc(summary["effect_doc"])))
    if "previous_cycle" in summary:
        notes.append("Previous cycle: " + (
            f"each latent's best match among cycle {int(summary['previous_cycle'])}'s latents, the one whose decoder "
            "direction is closest (cosine of the decoder rows; near 1: the same direction, the latent continues)"
            if summary["previous_cycle"] is not None else "none (cycle 0)"))
    density = ""
    if "index" in summary:
        n = max(int(summary["n_examples"]), 1)
        plots = [_density_plot([int(f) / n for f in summary["index"]["firings"]], "test split")]
        if "train_density" in summary["index"]:
            plots.append(_density_plot([float(v) for v in summary["index"]["train_density"]],
                                       "SAE training activations, as sparsity.safetensors holds it"))
        density = f'<h2>Firing density across latents</h2><div class="plots">{"".join(plots)}</div>'
    nav = "<nav>" + "".join(f'<a href="#latent-{int(d["latent"])}">{int(d["latent"])}</a>' for d in latents) + "</nav>"
    sections = [_card(d, summary) for d in latents]
    index = _index(summary, {int(d["latent"]) for d in latents}) if "index" in summary else ""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>{esc(title)}</h1>{head}"
            + "".join(f'<p class="note">{t}.</p>' for t in notes) + f"{density}<h2>Top latents</h2>{nav}\n" + "\n".join(sections)
            + f"\n{index}\n</body></html>\n")
