"""Port FlexAttention code to attncc by changing one import, and check the results agree.

Runs anywhere: on a CPU-only machine kernels run in Triton's interpreter (small shapes).
    python examples/flex_port.py
"""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import create_block_mask as torch_create_block_mask
from torch.nn.attention.flex_attention import flex_attention as torch_flex_attention

import attncc  # was: from torch.nn.attention.flex_attention import flex_attention, create_block_mask

device = "cuda" if torch.cuda.is_available() else "cpu"
B, H, L, D = 1, 4, 128, 32
q, k, v = (torch.randn(B, H, L, D, device=device) for _ in range(3))

document_id = torch.repeat_interleave(torch.arange(4, device=device), L // 4)  # packed documents
slopes = torch.exp2(-torch.arange(1, H + 1, device=device, dtype=torch.float32))


def alibi(score, b, h, q_idx, kv_idx):
    return score - slopes[h] * (q_idx - kv_idx)


def causal_document(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & (document_id[q_idx] == document_id[kv_idx])


mask = attncc.create_block_mask(causal_document, None, None, L, L, device=device)
out, lse = attncc.flex_attention(q, k, v, score_mod=alibi, block_mask=mask, return_lse=True)

ref_mask = torch_create_block_mask(causal_document, None, None, L, L, device=device)
ref, ref_lse = torch_flex_attention(q, k, v, score_mod=alibi, block_mask=ref_mask, return_lse=True)
print(f"max |out - torch| = {(out - ref).abs().max().item():.2e}, max |lse - torch| = {(lse - ref_lse).abs().max().item():.2e}")
print(f"block sparsity of the mask: {mask.sparsity():.1f}% of {mask.BLOCK_SIZE} blocks empty")
