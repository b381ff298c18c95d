"""QALoRA and TALSQ pieces: merged export bit-exact, per-timestep step gradients, QALoRA closed forms, errors."""

import pytest
import torch

import visq
from tests.efficientdm.conftest import STEPS
from visq.finetune import float_teacher, merge_lora
from visq.methods.efficientdm import EfficientDM
from visq.quantizers import QuantSpec, SiteShape, build
from visq.quantizers.lsq import LSQ, LSQQuantizer
from visq.quantizers.qalora import QALoRA, QALoRAQuantizer
from visq.recipes import parse


def _call(pipe, t: float):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(4, 4, 8, 8, generator=g), torch.tensor(t)), {
        "encoder_hidden_states": torch.randn(4, 5, 32, generator=g)}


def _perturb(model, seed: int = 0) -> None:
    """Training-like state: LoRA updates large enough to move integers, steps and offsets off their init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif name.endswith((".step", ".offset")):
                p.mul_(1 + 0.1 * torch.rand(p.shape, generator=g))


def test_qalora_forward_is_the_quantized_sum_and_starts_at_the_ptq_weight():
    site = SiteShape("weight", 6, 0, 8)
    q = build(QALoRA(inner=LSQ(bits=4, init="minmax"), rank=3), site)
    w = torch.randn(6, 8)
    q.observe(w)
    q.fit()
    assert torch.equal(q(w), q.inner(w))  # B = 0: exactly the PTQ weight
    with torch.no_grad():
        q.lora_B.normal_()
    torch.testing.assert_close(q(w), q.inner(w + q.lora_B @ q.lora_A), rtol=0, atol=0)
    conv = build(QALoRA(inner=LSQ(bits=4), rank=2), SiteShape("weight", 5, 0, 3 * 9, kernel=9))
    assert conv.delta(torch.zeros(5, 3, 3, 3)).shape == (5, 3, 3, 3)
    with pytest.raises(ValueError, match="weight"):
        build(QALoRA(), SiteShape("activation", 4, -1))
    spec = QALoRA(inner=LSQ(bits=4, granularity="channel"), rank=8)
    assert QuantSpec.from_dict(spec.to_dict()) == spec


def test_merged_model_equals_the_training_forward_bit_for_bit(qsd):
    model = qsd.unet
    _perturb(model)
    t = visq.quant_state(qsd).timesteps[1]
    args, kwargs = _call(qsd, t)
    with torch.no_grad():
        trained = model(*args, **kwargs).sample
        with float_teacher(model):
            teacher = model(*args, **kwargs).sample
    loras = [m for m in model.modules() if isinstance(m, QALoRAQuantizer)]
    weights = {id(m): m for m in loras}
    assert loras and len(weights) == len(loras)
    merge_lora(qsd)
    assert not any(isinstance(m, QALoRAQuantizer) for m in model.modules())
    assert not any("lora" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        merged = model(*args, **kwargs).sample
        for layer in model.modules():  # every weight lies on its grid: the integers hold the LoRA update
            wq = getattr(layer, "weight_quantizer", None)
            if isinstance(wq, LSQQuantizer):
                codes, (lo, hi) = wq.codes(layer.weight), wq.code_range
                assert torch.equal(codes, codes.round()) and lo <= codes.min() and codes.max() <= hi
                assert torch.equal(wq(layer.weight), layer.weight)
    assert torch.equal(merged, trained)
    assert (teacher - trained).abs().max() > 1e-3  # the comparison is not trivially float vs float
    specs = visq.quant_state(qsd).plan.quantized.values()
    assert all(spec.kind != "qalora" for spec in specs)  # save / load rebuild the merged model


def test_a_timestep_step_size_gets_gradients_only_at_its_own_timestep(qsd):
    model = qsd.unet
    timesteps = visq.quant_state(qsd).timesteps
    assert len(timesteps) == STEPS
    temporal = [m for m in model.modules() if isinstance(m, LSQQuantizer) and m.spec.per_timestep]
    assert temporal and all(m.step.shape[0] == STEPS for m in temporal)
    for i, t in enumerate(timesteps):
        model.zero_grad(set_to_none=True)
        args, kwargs = _call(qsd, t)
        model(*args, **kwargs).sample.pow(2).sum().backward()
        for m in temporal:
            rows = m.step.grad.abs().sum(dim=1)
            assert rows[i] > 0, "the step of the timestep in use gets a gradient"
            assert torch.count_nonzero(rows) == 1
            assert torch.count_nonzero(m.offset.grad.abs().sum(dim=1)) <= 1


def test_rules_talsq_off_and_errors():
    rules = parse("w4a4").rules
    on, off = EfficientDM().rules(rules), EfficientDM(talsq=False).rules(rules)
    acts = [r.spec for r in on if not r.pattern.endswith("weight_quantizer") and r.spec is not None]
    assert acts and all(isinstance(s, LSQ) and s.per_timestep and s.offset and not s.signed for s in acts)
    assert not any(getattr(r.spec, "per_timestep", False) for r in off)
    weights = [r.spec for r in on if r.pattern.endswith("weight_quantizer")]
    # the recipe's 4-bit weights are asymmetric: an unsigned grid with an offset, as EfficientDM's code has them
    assert weights and all(isinstance(s, QALoRA) and s.rank == 32 and not s.inner.signed and s.inner.offset
                           for s in weights)
    sym = [r.spec for r in EfficientDM().rules(parse("w4a4-sym").rules) if r.pattern.endswith("weight_quantizer")]
    assert sym and all(s.inner.signed and not s.inner.offset for s in sym)
    with pytest.raises(ValueError, match="-g"):
        EfficientDM().rules(parse("w4a8-g32").rules)
    with pytest.raises(ValueError, match="rank"):
        EfficientDM(rank=0)
