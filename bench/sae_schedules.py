"""SAE training schedules on a planted dictionary: the learning-rate warm-up and decay (sae.lr_warmup_steps,
sae.lr_decay) and the L1 warm-up (sae.l1_warmup_steps), each against the constant schedule, side by side in
one run, over seeds.

Data: 8192 activations in d = 32, each a sum of 4 of 128 planted unit atoms (tests/support/planted.py).
Reported per setting (mean ± sd over seeds): recovery of the planted atoms (each atom's best cosine with a
decoder row, averaged), explained variance, L0 (active latents per example; fixed at k for TopK).

    python bench/sae_schedules.py [--seeds 3]
"""

from __future__ import annotations

from planted_table import main

BY_KIND = {
    "topk": [{}, {"lr_warmup_steps": 150}, {"lr_warmup_steps": 150, "lr_decay": "cosine"},
             {"lr_warmup_steps": 150, "lr_decay": "linear"}],
    "l1": [{}, {"l1_warmup_steps": 150}, {"l1_warmup_steps": 750}, {"lr_warmup_steps": 150, "lr_decay": "cosine"},
           {"lr_warmup_steps": 150, "lr_decay": "cosine", "l1_warmup_steps": 750}],
}
SETTINGS = [(kind, extra) for kind, extra_list in BY_KIND.items() for extra in extra_list]

if __name__ == "__main__":
    main(SETTINGS, "constant (default)", ("recovery", "EV", "L0"))
