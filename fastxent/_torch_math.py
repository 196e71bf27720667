"""Differentiable PyTorch formulas of the losses in ``fastxent.torch`` (the integration layer).

The fused kernels give a loss and its gradient as plain numbers: enough for ``loss.backward()``,
but autograd cannot differentiate them again.  When it must -- a backward that records a graph
(``create_graph=True``, ``torch.func`` transforms, forward-mode AD over the backward) or a
forward-mode tangent (``jvp``) -- ``fastxent.torch`` computes the same gradient with the torch
operations below instead, so second derivatives are exact.

Every formula works on logits ``x`` of shape (N, C, d1, ...) (class axis 1, as torch) and uses
no data-dependent Python control flow, so it also runs under ``torch.func.vmap``.  16-bit logits
are computed in float32 (as the kernels do) and the result is cast back.

Per row, with the weighted target distribution ``qw`` (class weights times the one-hot or soft
target, label smoothing mixed in; 0 for ignored rows) and ``S = sum_c qw_c``::

    cross-entropy   loss = -sum_c qw_c log p_c          d loss / dx = S p - qw
    z-loss          loss += z lse^2                      d / dx      += 2 z lse p
    nll             loss = -sum_c qw_c x_c               d loss / dx = -qw

and "mean" divides by the sum of the targets' weights over the non-ignored rows (soft targets:
the number of rows), as ``torch.nn.functional.cross_entropy``.
"""
import math

import torch

_HALF = (torch.float16, torch.bfloat16)


def compute_dtype(dtype):
    """The dtype the formulas compute in: float32 for 16-bit input, the input's otherwise."""
    return torch.float32 if dtype in _HALF else dtype


def _class_shape(x):
    """Shape that broadcasts a (C,) vector along the class axis of x."""
    return (1, x.shape[1]) + (1,) * (x.dim() - 2)


def target_weights(x, target, weight, ignore_index, label_smoothing):
    """(qw, denom, valid): the weighted target distribution (x's shape and dtype), the "mean"
    denominator and the mask of rows that count (None for soft targets: every row counts)."""
    C = x.shape[1]
    eps = float(label_smoothing)
    w = None if weight is None else weight.to(x.dtype).reshape(_class_shape(x))
    if target.is_floating_point():
        q = target.to(x.dtype)
        if eps:
            q = q * (1.0 - eps) + eps / C
        qw = q if w is None else q * w
        return qw, float(math.prod(x.shape) // C) if C else 0.0, None
    y = target.long().unsqueeze(1)
    valid = y != ignore_index
    classes = torch.arange(C, device=x.device).reshape(_class_shape(x))
    onehot = (y == classes).to(x.dtype)
    if w is not None:
        onehot = onehot * w
    qw = onehot * (1.0 - eps) if eps else onehot
    if eps:
        qw = qw + (eps / C if w is None else w * (eps / C))
    qw = torch.where(valid, qw, 0.0)
    denom = onehot.sum(1, keepdim=True).mul(valid).sum()     # sum of w[y] over counted rows
    return qw, denom, valid


def _focal_factors(x, target, ignore_index, gamma):
    """(u, F) per row for class-index targets: u = (1 - p_y)^gamma (the loss factor) and
    F = u - gamma (1 - p_y)^(gamma - 1) p_y log p_y (the gradient factor), both (N, 1, d1, ...);
    F is 0 where p_y = 1 and 1 where p_y = 0 (the limits), with no 0 * inf on any branch."""
    y = target.long().unsqueeze(1)
    safe = torch.where(y != ignore_index, y, 0)
    lp = torch.log_softmax(x, 1).gather(1, safe)
    p = lp.exp()
    q = -torch.expm1(lp)                                  # 1 - p_y
    qs = torch.where(q > 0, q, 1.0)
    lps = torch.where(p > 0, lp, 0.0)
    u = q ** gamma
    f = qs ** gamma - gamma * qs ** (gamma - 1) * p * lps
    return u, torch.where(q > 0, f, 0.0)


def focal_loss(x, target, weight, ignore_index, reduction, gamma):
    """The focal loss -(1 - p_y)^gamma log p_y (times w[y]) in torch operations, reduced as
    the cross-entropy ("mean": / sum of w[y] over the rows that are not ignored)."""
    unbatched = x.dim() == 1
    if unbatched:
        x, target = x.unsqueeze(0), target.unsqueeze(0)
    xc = x.to(compute_dtype(x.dtype))
    qw, denom, valid = target_weights(xc, target, weight, ignore_index, 0.0)
    u, _ = _focal_factors(xc, target, ignore_index, gamma)
    rows = -(qw * torch.log_softmax(xc, 1)).sum(1, keepdim=True) * u
    rows = torch.where(valid, rows, 0.0).squeeze(1)
    out = reduce_rows(rows, reduction, denom).to(x.dtype)
    return out.squeeze(0) if unbatched and reduction == "none" else out


def xent_row_grad(x, target, weight, ignore_index, label_smoothing, z_loss=0.0, focal_gamma=0.0):
    """(g, denom, valid): g = d(loss of each row)/dx of the softmax cross-entropy (times the
    focal factor F for focal_gamma > 0: d/dx of -(1 - p_y)^gamma log p_y is F (p - onehot))."""
    qw, denom, valid = target_weights(x, target, weight, ignore_index, label_smoothing)
    p = torch.softmax(x, 1)
    g = p * qw.sum(1, keepdim=True) - qw
    if focal_gamma:
        g = g * _focal_factors(x, target, ignore_index, focal_gamma)[1]
    if z_loss:
        zg = (2.0 * z_loss) * torch.logsumexp(x, 1, keepdim=True) * p
        g = g + (zg if valid is None else torch.where(valid, zg, 0.0))
    return g, denom, valid


def nll_row_grad(x, target, weight, ignore_index):
    """(g, denom, valid) of the negative log-likelihood loss -qw . x (a constant g)."""
    qw, denom, valid = target_weights(x, target, weight, ignore_index, 0.0)
    return -qw, denom, valid


def scale_rows(g, grad_loss, reduction, denom, valid):
    """The backward: row gradients g times grad_loss (per row for "none"; / denom for "mean").
    Rows that do not count get exactly 0 (also when the mean is 0/0)."""
    if reduction == "none":
        s = grad_loss.unsqueeze(1)
    elif reduction == "mean":
        s = grad_loss / denom
    else:
        s = grad_loss
    out = g * s
    return out if valid is None else torch.where(valid, out, 0.0)


def reduce_rows(r, reduction, denom):
    """Per-row values r (N, d1, ...) reduced like the loss (the forward-mode tangent)."""
    if reduction == "none":
        return r
    total = r.sum()
    return total / denom if reduction == "mean" else total
