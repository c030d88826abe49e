"""The JumpReLU SAE kind and dead-latent resampling on a planted dictionary, against TopK, side by side in
one run, over seeds: how sae.l0_coefficient sets JumpReLU's L0 and how well it then recovers the planted
atoms (explained variance compared at about the same L0), and whether sae.resample_every changes anything.

Data: 8192 activations in d = 32, each a sum of 4 of 128 planted unit atoms (tests/support/planted.py).
Reported per setting (mean ± sd over seeds): recovery of the planted atoms (each atom's best cosine with a
decoder row, averaged), explained variance, L0 (active latents per example), dead latents (never firing on
the training rows at the end).

    python bench/sae_kinds.py [--seeds 3]
"""

from __future__ import annotations

from planted_table import main

SETTINGS = [
    ("topk", {}),
    ("topk", {"lr": 3e-3}),
    ("jumprelu", {"l0_coefficient": 0.03}),
    ("jumprelu", {"l0_coefficient": 0.1}),
    ("jumprelu", {"l0_coefficient": 0.3}),
    ("jumprelu", {"l0_coefficient": 0.03, "lr": 3e-3}),
    ("jumprelu", {"l0_coefficient": 0.1, "lr": 3e-3}),
    # Dead-latent resampling where latents can die: 16x latents (512 for 128 atoms), with and without AuxK.
    ("topk", {"expansion_factor": 16, "auxk_coefficient": 0}),
    ("topk", {"expansion_factor": 16, "auxk_coefficient": 0, "resample_every": 250}),
    ("l1", {"expansion_factor": 16}),
    ("l1", {"expansion_factor": 16, "resample_every": 250}),
    ("jumprelu", {"expansion_factor": 16, "l0_coefficient": 0.1, "lr": 3e-3}),
    ("jumprelu", {"expansion_factor": 16, "l0_coefficient": 0.1, "lr": 3e-3, "resample_every": 250}),
]

if __name__ == "__main__":
    main(SETTINGS, "defaults", ("recovery", "EV", "L0", "dead"))
