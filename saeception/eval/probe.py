"""Linear probes: standardised inputs, L2-regularised (C = 1) multinomial logistic regression.

Two interchangeable backends with one contract, `fit_probe(x, y, max_iter, backend) -> predict`:
- "torch": on x's device, full-batch L-BFGS with a strong Wolfe line search, float32, zero init, so
  the same inputs give the same probe on every run. No host round trips except L-BFGS's own.
- "sklearn": `make_pipeline(StandardScaler(), LogisticRegression(max_iter))` on CPU (the reference).

Both minimise scikit-learn's objective: mean cross-entropy + ||W||^2 / (2 C N), intercept not
penalised, the scaler's population std with near-constant columns left unscaled. With two classes
scikit-learn fits one binomial weight vector w; the two-row softmax used here equals it when its
penalty is doubled (at the optimum W = [w/2, -w/2], so 2 * (||w/2||^2 + ||w/2||^2) = ||w||^2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# scikit-learn's LogisticRegression defaults (tol is L-BFGS-B's gtol: max |gradient| at stop).
C = 1.0
TOL = 1e-4
# Standardised probe inputs are held whole up to this many elements (1 GiB in fp32), else per row block.
STANDARDIZED_ELEMENTS = 1 << 28

Predict = Callable[[Tensor], Tensor]


def standardizer(x: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, scale) of StandardScaler, from float64 statistics: population std, and scale 1 for
    columns indistinguishable from constant (its bound on the error of the two-pass variance)."""
    # Column blocks keep the float64 copy small (a 12,000 x 6,144 float64 copy is 590 MB).
    stats = [torch.var_mean(x[:, j:j + 512].double(), 0, correction=0) for j in range(0, x.shape[1], 512)]
    var, mean = torch.cat([v for v, _ in stats]), torch.cat([m for _, m in stats])
    n, eps = len(x), torch.finfo(torch.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    return mean, torch.where(constant, torch.ones_like(var), var.sqrt())


def _linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    # (K, d) @ (d, N) rather than (N, d) @ (d, K): the same numbers, and with K small the products of
    # this form (forward and the weight gradient) run ~2x faster on the CPU (MKL); no matter on CUDA.
    return (weight @ x.T).T + bias


@dataclass
class LinearProbe:
    """A fitted probe: logits = ((x - mean) / scale) @ weight.T + bias; weight (K, d), one row per class."""

    classes: Tensor
    mean: Tensor
    scale: Tensor
    weight: Tensor
    bias: Tensor

    def logits(self, x: Tensor) -> Tensor:
        return _linear((x.to(self.weight.dtype) - self.mean) / self.scale, self.weight, self.bias)

    def proba(self, x: Tensor) -> Tensor:
        """(N, K) class probabilities, columns in the order of `classes`."""
        return self.logits(x).softmax(-1)

    def predict(self, x: Tensor) -> Tensor:
        return self.classes[self.logits(x).argmax(-1)]


def fit_torch(x: Tensor, y: Tensor, max_iter: int, dtype: torch.dtype = torch.float32) -> LinearProbe:
    """Fits on x (N, d), y (N,) integer labels, on x's device. With one class present (scikit-learn
    refuses to fit) the probe predicts that class."""
    classes, target = torch.unique(y, return_inverse=True)
    mean, scale = (t.to(dtype) for t in standardizer(x))
    k = max(len(classes), 2)
    w = torch.zeros(k, x.shape[1], dtype=dtype, device=x.device, requires_grad=True)
    b = torch.zeros(k, dtype=dtype, device=x.device, requires_grad=True)
    if len(classes) < 2:
        return LinearProbe(classes, mean, scale, w.detach()[:1], b.detach()[:1])
    n = len(x)
    l2 = (2.0 if k == 2 else 1.0) / (C * n)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, max_eval=15000, tolerance_grad=TOL,
                            tolerance_change=64 * torch.finfo(torch.float64).eps, history_size=10,
                            line_search_fn="strong_wolfe")
    # The standardised inputs, whole when they fit in STANDARDIZED_ELEMENTS, else re-made per block of
    # rows at each evaluation: never a second full copy of a wide x (98,304 SAE latents).
    rows = max(1, STANDARDIZED_ELEMENTS // max(x.shape[1], 1))
    whole = [(x.detach().to(dtype) - mean) / scale] if n <= rows else None

    def blocks():
        if whole is not None:
            yield 0, whole[0]
            return
        for i in range(0, n, rows):
            yield i, (x[i:i + rows].detach().to(dtype) - mean) / scale

    @torch.no_grad()
    def closure() -> Tensor:
        # Mean cross-entropy + L2 and its gradient, accumulated over row blocks (softmax - onehot).
        loss = 0.5 * l2 * w.pow(2).sum()
        grad_w, grad_b = l2 * w, torch.zeros_like(b)
        for i, xs in blocks():
            logits = _linear(xs, w, b)
            t = target[i:i + len(xs)]
            loss += F.cross_entropy(logits, t, reduction="sum") / n
            residual = logits.softmax(-1)
            residual[torch.arange(len(t), device=t.device), t] -= 1
            residual /= n
            grad_w += residual.T @ xs
            grad_b += residual.sum(0)
        w.grad, b.grad = grad_w, grad_b
        return loss

    opt.step(closure)
    return LinearProbe(classes, mean, scale, w.detach(), b.detach())


def fit_sklearn(x: Tensor, y: Tensor, max_iter: int) -> Predict:
    from sklearn.linear_model import LogisticRegression  # lazy: scikit-learn only for eval.backend sklearn
    from sklearn.pipeline import make_pipeline  # lazy: scikit-learn only for eval.backend sklearn
    from sklearn.preprocessing import StandardScaler  # lazy: scikit-learn only for eval.backend sklearn

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=TOL, max_iter=max_iter))
    clf.fit(x.cpu().numpy(), y.cpu().numpy())
    return lambda z: torch.as_tensor(clf.predict(z.cpu().numpy()), device=z.device)


def fit_probe(x: Tensor, y: Tensor, max_iter: int, backend: str) -> Predict:
    """x (N, d) features, y (N,) labels; backend "torch" or "sklearn". Returns predict(x') -> labels."""
    return fit_torch(x, y, max_iter).predict if backend == "torch" else fit_sklearn(x, y, max_iter)


def accuracy(predict: Predict, x: Tensor, y: Tensor) -> float:
    return float((predict(x) == y).double().mean())
