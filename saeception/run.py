"""Single-chain CLI: python -m saeception.run [--config PATH] [--set KEY=VALUE ...] [--out DIR]"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from .config import ConfigError, load_config

TABLE_COLUMNS = ("cycle", "task_accuracy", "probe_accuracy", "sae_csi", "sae_u", "l0", "dead_pct",
                 "explained_variance", "aux_cosine_before", "aux_cosine")


def format_table(rows: list[dict], columns: tuple[str, ...] = TABLE_COLUMNS) -> str:
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "-"
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m saeception.run", description="Run one SAE-ception cycle chain.")
    p.add_argument("--config", help="YAML config file (nested or dotted keys); defaults otherwise")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set sae.k=32 (repeatable)")
    p.add_argument("--out", default="runs/latest", help="output directory (default: runs/latest)")
    p.add_argument("--keys", action="store_true", help="print every config key with its type, default and help, and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.keys:
        from .config import keys_text  # lazy: --help and --keys answer without loading torch

        print(keys_text())
        return 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    from saeception.method.chain import (  # lazy: --help and --keys answer without loading torch
        resolve_device,
        run_chain,
        setup,
    )
    from saeception.parallel.distributed import (
        init_single_process,  # lazy: --help and --keys answer without loading torch
    )
    from saeception.store.artifacts import ChainPaths  # lazy: --help and --keys answer without loading torch

    from .validate import check_dir, check_run  # lazy: --help and --keys answer without loading torch

    try:
        cfg = load_config(args.config, args.overrides)
        check_dir(args.out, "--out")
        check_run(cfg)  # the data and model the config names, before anything is loaded for real
        prepared = setup(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = ChainPaths(Path(args.out).resolve())

    def show(cycle: int, metrics: dict, _dir: Path) -> None:
        print(f"cycle {cycle} done in {metrics['cycle_seconds']:.1f}s: task_accuracy {metrics['task_accuracy']:.4f}, "
              f"sae_u {metrics['sae_u']:.4f}", flush=True)

    device = resolve_device(cfg.device)
    if cfg.train.strategy == "fsdp":
        init_single_process(device)
    history = run_chain(cfg, paths, on_cycle=show, prepared=prepared, device=device)
    print()
    print(format_table(history))
    print(f"\nwrote {paths.results()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
