"""Loads an exported saeception MLP classifier with torch and safetensors only. `python -m saeception.export`
copies this file into the export as `classifier/mlp.py`, so it must not import saeception.

    from mlp import load_mlp
    model = load_mlp("classifier")          # eval mode
    logits = model(features)                # (B, input_dim) float32 -> (B, n_classes)
"""

import json
from pathlib import Path

from safetensors.torch import load_file
from torch import nn


class MLP(nn.Module):
    # The module names of saeception.models.classifiers.MLP, so the saved state dict loads strictly.
    def __init__(self, input_dim, hidden_sizes, n_classes):
        super().__init__()
        dims = [input_dim, *hidden_sizes]
        self.hidden = nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(dims[-1], n_classes)

    def forward(self, features):
        x = features
        for layer in self.hidden:
            x = layer(x)
        return self.head(x)


def load_mlp(directory):
    directory = Path(directory)
    cfg = json.loads((directory / "config.json").read_text())
    model = MLP(cfg["input_dim"], cfg["hidden_sizes"], cfg["n_classes"])
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    return model.eval()
