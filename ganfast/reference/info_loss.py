"""Pure-PyTorch info_loss (InfoGAN's mutual-information loss): the oracle the kernels are tested
against, and the fallback backend. Same name and argument order as the op (csrc/ganfast.cpp),
same checks (ganfast/_args.py's check_info_loss), the math written with torch functions whose
derivatives are exact to every order. Half-precision inputs are computed in float32 and the
result returned in their dtype, as the kernels do.
"""
from __future__ import annotations

import torch

from .. import _args


def info_loss(cat_logits=None, cat_codes=None, cont_mean=None, cont_codes=None, cont_logstd=None,
              cat_weight=1.0, cont_weight=1.0):
    op = "ganfast::info_loss"
    o = _args.check_info_loss(op, cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd, cat_weight,
                               cont_weight)
    if o.has_cat:
        error = _args.info_codes_error(op, cat_codes, o.K)  # the reference may sync: it is the oracle
        if error is not None:
            raise error
    dtype = torch.float64 if o.like.dtype == torch.float64 else torch.float32
    total = None
    if o.has_cat:
        x = cat_logits.to(dtype)
        ce = torch.logsumexp(x, 1) - x.gather(1, cat_codes.unsqueeze(1)).squeeze(1)
        total = cat_weight * ce.mean()  # the mean over no rows is NaN, as torch's
    if o.has_cont:
        d = cont_codes.to(dtype) - cont_mean.to(dtype)
        if o.has_logstd:
            ls = cont_logstd.to(dtype)
            z = d * torch.exp(-ls)
            terms = ls + 0.5 * z * z
        else:
            terms = 0.5 * d * d
        part = cont_weight * terms.sum(1).mean()
        total = part if total is None else total + part
    return total.to(o.like.dtype)
