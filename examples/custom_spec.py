"""Declare a new variant as a spec file, compile it, inspect the generated kernel, run it.

    python examples/custom_spec.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import attncc
from attncc.runtime.explain import explain, format_explain

SPEC = '''
name = "local_softcap"
description = "Causal sliding window with tanh soft-capping, a per-head window bias."

[inputs]
q = "b h m d"
k = "b h n d"
v = "b h n e"

[params]
window = { type = "int", default = 64 }
cap = { type = "float", default = 30.0 }

[captures]
head_bias = { dims = "h", dtype = "float32" }

[cascade]
score = "q[b,h,m,d] * k[b,h,n,d] * scale"
modify = "cap * tanh(score / cap) + head_bias[h]"
mask = "(n <= m) & (m - n < window)"
normalize = "softmax(n)"
output = "p[b,h,m,n] * v[b,h,n,e]"
'''

with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "local_softcap.toml"
    path.write_text(SPEC)
    fn = attncc.load(str(path))

print(format_explain(explain(fn.generated.graph, (1, 2, 256, 256, 32), {"window": 64})))
device = "cuda" if torch.cuda.is_available() else "cpu"
q, k, v = (torch.randn(1, 2, 256, 32, device=device, requires_grad=True) for _ in range(3))
head_bias = torch.zeros(2, device=device, requires_grad=True)
out = fn(q, k, v, window=64, cap=30.0, head_bias=head_bias)
out.square().mean().backward()
# A per-head constant shifts every score of a row equally, so softmax cancels it: its gradient is ~0.
print("out", tuple(out.shape), "| grad of head_bias (expected ~0)", head_bias.grad)
print("generated module:", fn.generated.path or "(not written yet)")
