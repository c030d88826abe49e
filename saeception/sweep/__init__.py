"""The Ray/MLflow layer: `python -m saeception.sweep`.

`cli` (flags → a checked `plan.Plan`), `driver` (the run's steps), `space` (search spaces), `report`
(progress, best trial, plots), `confirmation` (control arms on fresh seeds), `tracking` (the only MLflow
user), `plots`, `vocab` (the names trials and the driver share); the Tune trainable and the Optuna searcher
live in `saeception.trainables`. This layer uses the core (`saeception.*`); the core never imports it.
Importing this package loads none of its modules (a Train worker taking `sweep.vocab` gets no CLI).
"""
