"""torch.compile captures every variant's training forward in one graph (no graph breaks).

``fullgraph=True`` turns any graph break into an error. The ``eager`` backend only
runs Dynamo's capture, and ``aot_eager`` adds the AOTAutograd trace of the backward
pass, so these tests need no C++ compiler and stay fast on CPU.
"""

import shutil
import warnings

import pytest
import torch

from attnlab.model import build_model
from conftest import supported_config, tiny_config
from variants import available_variants

VARIANTS = available_variants()

pytestmark = pytest.mark.slow  # Dynamo/inductor compilation: seconds per test


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _inputs(model, T=16):
    x = torch.randn(2, T, model.config.n_embd, requires_grad=True)
    return x, model.rope_cos[:T], model.rope_sin[:T]


@pytest.mark.parametrize("variant", VARIANTS)
def test_block_forward_has_no_graph_break(variant):
    model = build_model(supported_config(variant))
    block = model.blocks[0]
    x, cos, sin = _inputs(model)
    explanation = torch._dynamo.explain(block)(x, cos, sin)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_compiled_block_forward_and_backward_match_eager(variant):
    model = build_model(supported_config(variant))
    block = model.blocks[0]
    x, cos, sin = _inputs(model)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    expected, _ = block(x, cos, sin)
    (grad_expected,) = torch.autograd.grad(expected.square().sum(), x)
    actual, _ = compiled(x, cos, sin)
    (grad_actual,) = torch.autograd.grad(actual.square().sum(), x)
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(grad_actual, grad_expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_whole_model_training_forward_compiles_in_one_graph(variant):
    model = build_model(supported_config(variant))
    idx = torch.randint(0, 100, (2, 16))
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(idx), model(idx))


@pytest.mark.parametrize("checkpointing", [False, True], ids=["stored", "recomputed"])
def test_compiled_blocks_train_as_the_eager_model_under_the_same_parameter_names(checkpointing):
    eager = build_model(tiny_config("diff_attn", n_head=4, n_query_groups=2, n_layer=3))
    compiled = build_model(tiny_config("diff_attn", n_head=4, n_query_groups=2, n_layer=3))
    names = list(compiled.state_dict())
    compiled.compile_blocks(fullgraph=True, backend="aot_eager")
    assert list(compiled.state_dict()) == names  # checkpoints of compiled and plain runs are alike
    idx = torch.randint(0, 100, (2, 16))
    for model in (eager, compiled):
        model.activation_checkpointing = checkpointing
        model(idx).square().mean().backward()
    torch.testing.assert_close(compiled(idx), eager(idx))
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_block_forward_with_the_flex_kernel_has_no_graph_break(variant):
    # No gradients: FlexAttention has no CPU backward (tests/test_flex_kernel.py).
    model = build_model(supported_config(variant, "flex")).eval()
    block = model.blocks[0]
    x, cos, sin = _inputs(model)
    with torch.no_grad():
        explanation = torch._dynamo.explain(block)(x.detach(), cos, sin)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="Inductor's CPU backend needs a C++ compiler")
@pytest.mark.skipif(torch.__version__ < "2.13", reason="torch < 2.13 (seen on 2.11): its CPU FlexAttention template "
                    "cannot lower a score_mod that reads a computed tensor (a LoweringException); 2.13's can")
def test_inductor_compiled_flex_block_matches_eager():
    """Inductor's real FlexAttention kernel, with the qk_scale term as a score_mod (forward
    only, as FlexAttention has no CPU backward). Guards the contiguous() in the flex kernel:
    without it this compiled block was off by 0.03 on torch 2.13."""
    model = build_model(tiny_config("qk_scale", attn_kernel="flex")).eval()
    attn = model.blocks[0].attn
    T = 29  # not a multiple of the kernel's tile sizes
    x = torch.randn(2, T, model.config.n_embd)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        expected = attn(x, model.rope_cos[:T], model.rope_sin[:T]).output
        actual = torch.compile(attn, fullgraph=True)(x, model.rope_cos[:T], model.rope_sin[:T]).output
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_validation_and_generation_shapes_compile_a_bounded_number_of_times(variant):
    """Dynamo's frame count (one per compile) as a compiled run uses the model: training steps,
    validation at another batch size, KV-cache generation at several prompt lengths, and the
    attention weights the head scores read. After each kind of call has compiled once (and once
    more, where Dynamo then marks the changed sizes dynamic), no further call recompiles."""
    from torch._dynamo.testing import CompileCounter

    from attnlab.generate import SamplingConfig, generate

    model = build_model(supported_config(variant, block_size=64, n_layer=4))
    counter = CompileCounter()
    model.compile_blocks(backend=counter)  # as train.py compiles
    for _ in range(3):
        model(torch.randint(0, 100, (4, 32))).sum().backward()
    assert counter.frame_count == 1  # one graph for all four layers: none specialises on its depth
    with torch.no_grad():
        for _ in range(3):
            model(torch.randint(0, 100, (8, 32)))
    assert counter.frame_count <= 2
    model.eval()
    with torch.no_grad():
        for prompt, new in (([1, 2, 3, 4], 20), ([5, 6, 7], 20)):
            generate(model, prompt, 100, SamplingConfig(max_new_tokens=new, greedy=True))
        assert counter.frame_count <= 6  # not one per generated token (40 here)
        for length in (20, 24):  # the head-score probe at every validation: attention weights
            model.attention_probs(torch.randint(0, 100, (4, length)))
        warm = counter.frame_count
        # Below Dynamo's recompile limit for Block.forward: no shape of a run falls back to eager.
        assert warm < torch._dynamo.config.recompile_limit
        for prompt, new in (([5, 6, 7, 8, 9], 10), ([5, 6], 30)):
            generate(model, prompt, 100, SamplingConfig(max_new_tokens=new, greedy=True))
        model.attention_probs(torch.randint(0, 100, (4, 28)))
    model.train()
    model(torch.randint(0, 100, (4, 32))).sum().backward()
    assert counter.frame_count == warm
