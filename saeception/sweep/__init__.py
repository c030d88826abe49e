"""The Ray/MLflow layer: `python -m saeception.sweep`.

`cli` (flags → a checked `Plan`), `driver` (the run's steps), `space` (search spaces), `report` (progress,
best trial, plots), `confirmation` (control arms on fresh seeds), `tracking` (the only MLflow user),
`plots`; the Tune trainable and the Optuna searcher live in `saeception.trainables`. This layer uses
the core (`saeception.*`); the core never imports it.
"""

from .cli import Plan, main, parser, plan
from .report import best_trials, pareto_front

__all__ = ["Plan", "best_trials", "main", "pareto_front", "parser", "plan"]
