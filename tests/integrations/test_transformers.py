"""attn_implementation="attncc" in Hugging Face transformers, against dense torch attention.

Tiny random-weight models built from configs (no downloads): Llama with GQA, Gemma 2 with logit
soft-capping and alternating sliding-window layers, gpt-oss with attention sinks and sliding
windows.  The reference is the same model on ``"attncc_test_dense"``, an attention function
written here in plain torch (the dense boolean mask from transformers' ``sdpa_mask``; the sink as
an extra key column; fully masked rows give 0, as attncc's do), in fp64 for the golden values and
in fp32 for the same-dtype error of the 2x rule.  transformers' own ``"eager"`` cannot be the
golden: it computes the softmax in fp32 even for fp64 models, and its fully masked (left-padded)
rows become NaN in fp64.  ``test_dense_reference_is_eager`` checks that the reference equals
``"eager"`` in fp32 where both are defined; generation is compared with ``"eager"`` directly.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
from reference import assert_close_to_golden

transformers = pytest.importorskip("transformers", reason="the hf extra (pip install '.[hf]') is not installed")

from reference import masked_softmax_attention  # noqa: E402
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask  # noqa: E402

import attncc  # noqa: E402
from attncc.integrations import transformers as hf  # noqa: E402
from attncc.runtime.compiled import _COMPILED  # noqa: E402

DENSE = "attncc_test_dense"

VOCAB = 61
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, max_position_embeddings=64)


def _llama() -> Any:
    return transformers.LlamaConfig(**COMMON)


def _gemma2() -> Any:
    return transformers.Gemma2Config(**COMMON, sliding_window=5, attn_logit_softcapping=3.0,
                                     final_logit_softcapping=None, query_pre_attn_scalar=8)


def _gpt_oss() -> Any:
    return transformers.GptOssConfig(**{**COMMON, "intermediate_size": 32}, sliding_window=4, num_local_experts=2,
                                     num_experts_per_tok=1)


FAMILIES = {
    "llama-gqa": (_llama, "LlamaForCausalLM"),
    "gemma2-softcap-window": (_gemma2, "Gemma2ForCausalLM"),
    "gpt_oss-sinks-window": (_gpt_oss, "GptOssForCausalLM"),
}


def _dense_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     softcap: float | None = None, s_aux: torch.Tensor | None = None,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Plain-torch attention: query [B, H, M, D], key/value [B, HK, N, D] -> [B, M, H, D]."""
    B, H, M, D = query.shape
    N = key.shape[2]
    k = key.repeat_interleave(H // key.shape[1], dim=1)
    v = value.repeat_interleave(H // value.shape[1], dim=1)
    s = query @ k.transpose(-1, -2) * (scaling if scaling is not None else D ** -0.5)
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if attention_mask is None:
        keep = torch.ones(M, N, dtype=torch.bool).tril(N - M)[None, None]
    elif attention_mask.dtype == torch.bool:
        keep = attention_mask[..., :N]
    else:  # additive 4D mask: finfo.min where masked
        keep = attention_mask > torch.finfo(attention_mask.dtype).min / 2
        s = s + torch.where(keep, attention_mask, 0).to(s.dtype)
    keep = keep.expand(B, H, M, N)
    if s_aux is not None:  # the sink: one more key per head, always visible, with value 0
        s = torch.cat([s, s_aux.to(s.dtype).view(1, H, 1, 1).expand(B, H, M, 1)], dim=-1)
        keep = torch.cat([keep, torch.ones(B, H, M, 1, dtype=torch.bool)], dim=-1)
        v = torch.cat([v, torch.zeros(B, H, 1, v.shape[-1], dtype=v.dtype)], dim=2)
    out, _ = masked_softmax_attention(s, keep, v)
    return out.transpose(1, 2).contiguous(), None


def _dense_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


transformers.AttentionInterface.register(DENSE, _dense_attention)
AttentionMaskInterface.register(DENSE, _dense_mask)


def _build(family: str, implementation: str) -> Any:
    make_config, cls_name = FAMILIES[family]
    torch.manual_seed(0)
    extra = {"experts_implementation": "eager"} if family.startswith("gpt_oss") else {}  # grouped_mm has no fp64
    model = getattr(transformers, cls_name)._from_config(make_config(), attn_implementation=implementation, **extra)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("sinks"):
                p.normal_()
    return model.eval()


def _models(family: str) -> tuple[Any, Any, Any]:
    """(attncc fp32, dense fp32, dense fp64) with the same random weights (sinks made non-zero)."""
    ours = _build(family, "attncc")
    same = _build(family, DENSE)
    same.load_state_dict(ours.state_dict())
    return ours, same, copy.deepcopy(same).double()


@pytest.mark.parametrize("family", [pytest.param(f, id=f) for f in FAMILIES])
def test_dense_reference_is_eager(family: str) -> None:
    """The reference of this file is transformers' eager attention where that is defined (no padding)."""
    dense, eager = _build(family, DENSE), _build(family, "eager")
    ids = torch.randint(0, VOCAB, (2, 13), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        diff = (dense(ids).logits - eager(ids).logits).abs().max().item()
    assert diff < 1e-5, f"{family}: dense reference logits differ from eager by {diff:.3g}"


def _logits_and_grads(model: Any, ids: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor,
                      **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits at the ``keep`` positions, and the gradients of a weighted sum of them."""
    model.zero_grad(set_to_none=True)
    logits = model(ids, **kwargs).logits[keep]
    (logits * weight.to(logits.dtype)[keep]).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def _check(label: str, models: tuple[Any, Any, Any], ids: torch.Tensor, keep: torch.Tensor, **kwargs: Any) -> None:
    weight = torch.randn(*ids.shape, VOCAB, generator=torch.Generator().manual_seed(1))
    (got, g_got), (same, g_same), (gold, g_gold) = (_logits_and_grads(m, ids, weight, keep, **kwargs) for m in models)
    assert_close_to_golden(f"{label}: logits", got, gold, same)
    assert g_got.keys() == g_gold.keys(), f"{label}: gradients of {sorted(g_gold.keys() - g_got.keys())} missing"
    for name in g_gold:
        assert_close_to_golden(f"{label}: gradient of {name}", g_got[name], g_gold[name], g_same[name])


@pytest.mark.parametrize("family", [pytest.param(f, id=f) for f in FAMILIES])
def test_padded_batch_logits_and_gradients(family: str) -> None:
    """Left padding in one row of two: the 2D attention mask reaches attncc through the mask interface."""
    ids = torch.randint(0, VOCAB, (2, 13), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, :4] = 0
    _check(f"{family} padded", _models(family), ids, mask.bool(), attention_mask=mask)


def test_packed_sequences_by_position_ids() -> None:
    """Three sequences (5, 1 and 7 tokens) packed in one row: position ids restart at each one
    (transformers finds packing from them without a cache)."""
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 0, 0, 1, 2, 3, 4, 5, 6]])
    ids = torch.randint(0, VOCAB, (1, 13), generator=torch.Generator().manual_seed(3))
    _check("llama packed", _models("llama-gqa"), ids, torch.ones(1, 13, dtype=torch.bool), position_ids=position_ids,
           use_cache=False)


def test_packed_sequences_by_cu_seqlens() -> None:
    """Flash-attention style packing (cu_seq_lens_q/k) gives the same logits as the sequences run apart
    (with a cache, so transformers does not find the packing from the position ids itself)."""
    ours, _, _ = _models("llama-gqa")
    ids = torch.randint(0, VOCAB, (1, 11), generator=torch.Generator().manual_seed(4))
    cu = torch.tensor([0, 6, 11], dtype=torch.int32)
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4]])
    with torch.no_grad():
        packed = ours(ids, position_ids=position_ids, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=6,
                      max_length_k=6).logits
        apart = torch.cat([ours(ids[:, :6]).logits, ours(ids[:, 6:]).logits], dim=1)
    diff = (packed - apart).abs().max().item()
    assert diff < 1e-5, f"llama cu_seqlens packing: logits differ from separate sequences by {diff:.3g}"


@pytest.mark.parametrize("family", [pytest.param(f, id=f) for f in ("llama-gqa", "gemma2-softcap-window")])
def test_greedy_generate_matches_eager_and_uses_decode(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four greedy tokens from a KV cache: the same tokens as eager; the steps run attncc.decode and
    compile nothing after the first step."""
    ours, eager = _build(family, "attncc"), _build(family, "eager")
    calls: list[tuple[int, ...]] = []
    compiled_specs: list[int] = []
    real_decode = attncc.decode

    def counting_decode(q: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls.append(tuple(q.shape))
        out = real_decode(q, *args, **kwargs)
        compiled_specs.append(len(_COMPILED))
        return out

    monkeypatch.setattr(hf.attncc, "decode", counting_decode)
    prompt = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(5))
    got = ours.generate(prompt, max_new_tokens=4, do_sample=False)
    want = eager.generate(prompt, max_new_tokens=4, do_sample=False)
    assert got.tolist() == want.tolist(), f"{family}: generated {got.tolist()}, eager {want.tolist()}"
    layers = ours.config.num_hidden_layers
    assert len(calls) == 3 * layers and all(s[2] == 1 for s in calls), f"{family}: decode calls {calls}"
    # later steps (longer caches, new offsets) reuse the kernels of the first step
    assert len(set(compiled_specs[layers - 1:])) == 1, f"{family}: specs compiled per step {compiled_specs}"


def _cache_kw(model: Any) -> str:
    """The forward keyword of the KV cache (``past_key_values`` before transformers 5)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _shifted_bias_mask(L: int, doc: torch.Tensor) -> torch.Tensor:
    """A 4D additive mask for the reference: causal, same document, score - 0.05 * (q - kv)^2."""
    q, kv = torch.arange(L)[:, None], torch.arange(L)[None, :]
    keep = (kv <= q) & (doc[:, :, None] == doc[:, None, :])
    bias = -0.05 * (q - kv).double() ** 2
    return torch.where(keep, bias, torch.finfo(torch.float64).min)[:, None]


def test_use_attaches_mods_without_editing_the_model() -> None:
    """use(model, score_mod=, mask_mod=): a quadratic distance penalty and a document mask on top of causal."""
    models = _models("llama-gqa")
    doc = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2]])

    def penalty(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return score - 0.05 * (q_idx - kv_idx) * (q_idx - kv_idx)

    def same_doc(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return doc[b, q_idx] == doc[b, kv_idx]

    hf.use(models[0], score_mod=penalty, mask_mod=same_doc)
    ids = torch.randint(0, VOCAB, (1, 11), generator=torch.Generator().manual_seed(6))
    weight = torch.randn(1, 11, VOCAB, generator=torch.Generator().manual_seed(1))
    keep = torch.ones(1, 11, dtype=torch.bool)
    dense = _shifted_bias_mask(11, doc)
    got, g_got = _logits_and_grads(models[0], ids, weight, keep)
    same, g_same = _logits_and_grads(models[1], ids, weight, keep, attention_mask=dense.float())
    gold, g_gold = _logits_and_grads(models[2], ids, weight, keep, attention_mask=dense)
    assert_close_to_golden("llama use(mods): logits", got, gold, same)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"):
        assert_close_to_golden(f"llama use(mods): gradient of {name}", g_got[name], g_gold[name], g_same[name])
    with torch.no_grad():  # one decode step from a cache: the mods see absolute positions there too
        cache = models[0](ids[:, :10], use_cache=True).past_key_values
        step = models[0](ids[:, 10:], **{_cache_kw(models[0]): cache}, use_cache=True).logits
    assert_close_to_golden("llama use(mods): decode step logits", step[0, -1], gold[-1], same[-1])


def test_use_attaches_a_spec() -> None:
    """use(model, spec="sliding_window", window=3) against the reference given the window as a 4D mask;
    prefill and one decode step from a KV cache."""
    ours, same_model, golden = _models("llama-gqa")
    hf.use(ours, spec="sliding_window", window=3)
    ids = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(7))
    q, kv = torch.arange(10)[:, None], torch.arange(10)[None, :]
    keep = ((kv <= q) & (q - kv < 3))[None, None]
    with torch.no_grad():
        got = ours(ids).logits
        same = same_model(ids, attention_mask=keep).logits
        gold = golden(ids, attention_mask=keep).logits
    assert_close_to_golden("llama use(spec=sliding_window): logits", got, gold, same)
    with torch.no_grad():
        cache = ours(ids[:, :9], use_cache=True).past_key_values
        step = ours(ids[:, 9:], **{_cache_kw(ours): cache}, use_cache=True).logits
    assert_close_to_golden("llama use(spec=sliding_window): decode step logits", step[0, -1], gold[0, -1], same[0, -1])


def _one_line_error(fn: Callable[[], Any], *needles: str) -> None:
    with pytest.raises(attncc.InputError) as err:
        fn()
    text = str(err.value)
    assert "\n" not in text and all(n in text for n in needles), text


def test_unsupported_calls_fail_with_one_line() -> None:
    ours, _, _ = _models("llama-gqa")
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(8))
    _one_line_error(lambda: ours(ids, output_attentions=True), "output_attentions")
    padded = torch.ones(2, 7, dtype=torch.long)
    padded[0, :2] = 0
    hf.use(ours, spec="causal")
    _one_line_error(lambda: ours(ids, attention_mask=padded), "padded")
    _one_line_error(lambda: hf.use(ours, spec="causal", mask_mod=lambda b, h, q, k: q >= k), "not both")
    _one_line_error(lambda: hf.use(ours, window=3), "no spec")
    hf.use(ours)  # detached: padding works again
    ours(ids, attention_mask=padded)
    ours.train()
    for module in ours.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.1
    _one_line_error(lambda: ours(ids), "dropout=0.1")
