"""DiT backbones: sizes, roles, conditioning, zero-init and the recursive variant."""
import pytest
import torch

from onestep.config import structure
from onestep.errors import ConfigError
from onestep.interfaces import DataSpec, NetworkRequest
from onestep.registry import Registry
from onestep_dit.dit import FAMILIES, DiTBackbone, DiTConfig, RecursiveDiTBackbone, RecursiveDiTConfig

LATENTS = DataSpec((4, 32, 32), num_classes=1000, kind="latents")
MNIST = DataSpec((1, 28, 28), num_classes=10, kind="images")
TIMES = {0: {}, 1: {"t": None}, 2: {"s": None, "t": None}}


def call(model, x, request, y=None):
    kw = {k: torch.rand(x.shape[0]) for k in TIMES[request.time_inputs]}
    return model(x, y=y, **kw)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_both_backbones_are_registered():
    reg = Registry.discover()
    assert {"dit", "dit-recursive"} <= set(reg.names("backbone"))
    assert reg.get("backbone", "dit-recursive").cls is RecursiveDiTBackbone


# AF Table 10 (MeanFlow sizes, one-step G without timestep projection and its [CLS] critic,
# 1000 classes on 32x32x4 latents), in millions of parameters.
PAPER_PARAMS = {"B/2": (130, 129), "M/2": (306, 304), "L/2": (457, 455), "XL/2": (673, 671)}


@pytest.mark.parametrize("size", sorted(PAPER_PARAMS))
def test_paper_sizes_have_the_published_parameter_counts_and_shapes(size):
    bb = DiTBackbone(DiTConfig(size=size))
    with torch.device("meta"):
        g = bb.build(NetworkRequest("generator", 0, True), LATENTS)
        d = bb.build(NetworkRequest("critic", 1, True), LATENTS)
        x = torch.empty(2, 4, 32, 32)
        y = torch.zeros(2, dtype=torch.long)
        assert g(x, y=y).shape == (2, 4, 32, 32)
        assert d(x, t=torch.empty(2), y=y).shape == (2,)
    g_paper, d_paper = PAPER_PARAMS[size]
    # the paper's D also drops the timestep projection for one-step models: subtract ours
    d_no_time = n_params(d) - n_params(d.time_embedders)
    assert abs(n_params(g) / 1e6 - g_paper) < 1.0
    assert abs(d_no_time / 1e6 - d_paper) < 1.0


@pytest.mark.parametrize("spec,size", [(MNIST, "T/7"), (MNIST, "P/2"), (LATENTS, "P/2")])
@pytest.mark.parametrize("role,time_inputs", [("generator", 0), ("generator", 1), ("generator", 2), ("critic", 0),
                                              ("critic", 1), ("classifier", 1)])
def test_every_role_gives_its_output_shape(spec, size, role, time_inputs):
    torch.manual_seed(0)
    request = NetworkRequest(role, time_inputs, class_conditional=role != "classifier")
    model = DiTBackbone(DiTConfig(size=size)).build(request, spec)
    x = torch.randn(3, *spec.shape)
    out = call(model, x, request, y=torch.tensor([0, 1, 2]))
    expected = {"generator": (3, *spec.shape), "critic": (3,), "classifier": (3, spec.num_classes)}[role]
    assert out.shape == expected and torch.isfinite(out).all()


def test_all_families_build_on_tiny_inputs():
    for name in FAMILIES:
        with torch.device("meta"):
            m = DiTBackbone(DiTConfig(size=f"{name}/7")).build(NetworkRequest("critic", 1, True), MNIST)
            assert m(torch.empty(2, 1, 28, 28), t=torch.empty(2), y=torch.zeros(2, dtype=torch.long)).shape == (2,)


def test_zero_init_makes_every_block_the_identity():
    """adaLN-Zero: the generator starts at exactly 0 and the critic at a constant logit (the
    [CLS] token passes the identity blocks untouched), whatever the input."""
    torch.manual_seed(0)
    bb = DiTBackbone(DiTConfig(size="T/4"))
    g = bb.build(NetworkRequest("generator", 2, True), MNIST)
    d = bb.build(NetworkRequest("critic", 1, True), MNIST)
    x = torch.randn(4, 1, 28, 28)
    y = torch.arange(4)
    assert torch.equal(call(g, x, NetworkRequest("generator", 2), y), torch.zeros_like(x))
    logits = d(x, t=torch.rand(4), y=y)
    torch.testing.assert_close(logits, torch.full_like(logits, float(logits[0])))
    torch.testing.assert_close(d(torch.randn_like(x), t=torch.rand(4), y=y.flip(0)), logits)


def test_generator_learns_from_zero_init():
    torch.manual_seed(0)
    g = DiTBackbone(DiTConfig(size="P/4")).build(NetworkRequest("generator", 0, True), MNIST)
    x = torch.randn(8, 1, 28, 28)
    target = 0.5 * x + 0.3  # a map the network can express (random targets are not learnable in 30 steps)
    y = torch.arange(8)
    opt = torch.optim.Adam(g.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = (g(x, y=y) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.blocks[0].adaLN_modulation.parameters())


def test_labels_use_a_table_with_a_null_row_and_none_means_null():
    torch.manual_seed(0)
    g = DiTBackbone(DiTConfig(size="P/4")).build(NetworkRequest("critic", 0, True), MNIST)
    assert g.label_embedding.num_embeddings == MNIST.num_classes + 1
    with torch.no_grad():  # leave adaLN-Zero (identity blocks ignore the condition) so labels can act
        for blk in g.blocks:
            blk.adaLN_modulation[-1].weight.normal_(std=0.05)
    x = torch.randn(2, 1, 28, 28)
    null = torch.full((2,), MNIST.null_label)
    assert torch.equal(g(x, y=None), g(x, y=null))
    assert not torch.allclose(g(x, y=null), g(x, y=torch.zeros(2, dtype=torch.long)))


def test_classifier_ignores_labels_and_uses_time():
    torch.manual_seed(0)
    c = DiTBackbone(DiTConfig(size="P/4", readout="mean", qk_norm=True)).build(
        NetworkRequest("classifier", 1, False), MNIST)
    assert c.label_embedding is None and c.cls_token is None
    with torch.no_grad():
        for blk in c.blocks:  # leave adaLN-Zero so that time can act
            blk.adaLN_modulation[-1].weight.normal_(std=0.05)
    x = torch.randn(2, 1, 28, 28)
    assert not torch.allclose(c(x, t=torch.zeros(2)), c(x, t=torch.ones(2)))


def _randomize_modulation(model):
    with torch.no_grad():
        for blk in model.blocks:
            blk.adaLN_modulation[-1].weight.normal_(std=0.05)
            blk.adaLN_modulation[-1].bias.normal_(std=0.05)
        model.head.adaLN_modulation[-1].weight.normal_(std=0.05)
        model.head.linear.weight.normal_(std=0.05)


def test_recursive_dit_shares_weights_and_conditions_each_pass_differently():
    request = NetworkRequest("generator", 0, True)
    models = {r: RecursiveDiTBackbone(RecursiveDiTConfig(size="P/4", repeats=r)).build(request, MNIST) for r in (1, 2, 4)}
    plain = DiTBackbone(DiTConfig(size="P/4")).build(request, MNIST)
    counts = {r: n_params(m) for r, m in models.items()}
    assert counts[1] == counts[2] == counts[4] == n_params(plain) + n_params(models[1].repeat_embedder)

    torch.manual_seed(0)
    model = models[4]
    _randomize_modulation(model)
    seen = []
    handle = model.blocks[0].register_forward_hook(lambda mod, args, out: seen.append(args[1].detach().clone()))
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([3, 5])
    out = model(x, y=y)
    handle.remove()
    assert len(seen) == 4
    assert all(not torch.allclose(seen[i], seen[j]) for i in range(4) for j in range(i + 1, 4))

    # the same hidden state goes through the shared stack four times, one condition per pass
    with torch.no_grad():
        h = model.patch_embed(x).flatten(2).transpose(1, 2) + model.pos_embed
        c = model.condition(2, None, None, y, x.device)
        for c_pass in model.pass_conditions(c):
            for blk in model.blocks:
                h = blk(h, c_pass)
        manual = model.unpatchify(model.head(h, c))
    torch.testing.assert_close(out, manual)
    with torch.no_grad():
        model.repeats = 1
        assert not torch.allclose(model(x, y=y), out)


def test_recursive_backbone_keeps_critics_at_standard_depth():
    bb = RecursiveDiTBackbone(RecursiveDiTConfig(size="P/4", repeats=3))
    d = bb.build(NetworkRequest("critic", 1, True), MNIST)
    assert d.repeat_embedder is None and d.repeats == 1
    assert bb.build(NetworkRequest("generator", 0, True), MNIST).repeats == 3


@pytest.mark.parametrize("raw, match", [
    ({"size": "Q/2"}, r"^backbone.size: expected NAME/PATCH with NAME one of XL, "),
    ({"size": "B"}, r"^backbone.size: expected NAME/PATCH"),
    ({"readout": "max"}, r"^backbone.readout: expected one of cls, mean, got 'max'$"),
    ({"attention": "xformers"}, r"^backbone.attention: expected one of auto, .*got 'xformers'$"),
    ({"mlp_ratio": 0.0}, r"^backbone.mlp_ratio: expected > 0, got 0.0$"),
])
def test_bad_config_names_the_field(raw, match):
    with pytest.raises(ConfigError, match=match):
        structure(raw, DiTConfig, "backbone")


@pytest.mark.parametrize("cfg,spec,match", [
    (DiTConfig(size="T/3"), MNIST, "does not divide"),
    (DiTConfig(size="T/2"), DataSpec((2,)), "image-shaped"),
])
def test_a_config_that_does_not_fit_the_data_names_why(cfg, spec, match):
    with pytest.raises(ConfigError, match=match):
        DiTBackbone(cfg).build(NetworkRequest("generator", 0, False), spec)


def test_recursive_needs_positive_repeats():
    with pytest.raises(ConfigError, match="^backbone.repeats: expected >= 1, got 0$"):
        structure({"repeats": 0}, RecursiveDiTConfig, "backbone")


def _ran_ops(model, *args, **kw):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = model(*args, **kw)
    return out, {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("compiled", [False, True])
def test_attention_option_picks_the_sdpa_kernel_that_runs(compiled):
    torch.manual_seed(0)
    request = NetworkRequest("generator", 0, True)
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([3, 5])
    outs, ops = {}, {}
    for kernel in ("math", "flash"):
        torch.manual_seed(1)
        model = DiTBackbone(DiTConfig(size="P/7", attention=kernel)).build(request, MNIST)
        _randomize_modulation(model)
        if compiled:
            DiTBackbone(DiTConfig(size="P/7", attention=kernel)).compile(model)
        with torch.no_grad():
            outs[kernel], ops[kernel] = _ran_ops(model, x, y=y)
    assert any("attention_math" in k for k in ops["math"]) and not any("flash" in k for k in ops["math"])
    assert any("flash_attention" in k for k in ops["flash"]) and not any("attention_math" in k for k in ops["flash"])
    torch.testing.assert_close(outs["math"], outs["flash"], rtol=1e-4, atol=1e-5)


def test_bf16_residual_stream_applies_under_bf16_autocast_only():
    torch.manual_seed(0)
    request = NetworkRequest("critic", 0, True)
    plain = DiTBackbone(DiTConfig(size="P/7")).build(request, MNIST)
    with torch.no_grad():
        for blk in plain.blocks:
            blk.adaLN_modulation[-1].weight.normal_(std=0.05)
            blk.adaLN_modulation[-1].bias.normal_(std=0.05)
    lean = DiTBackbone(DiTConfig(size="P/7", residual_bf16=True)).build(request, MNIST)
    lean.load_state_dict(plain.state_dict())
    stream = []
    lean.blocks[-1].register_forward_hook(lambda mod, args, out: stream.append(out.dtype))
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    torch.testing.assert_close(lean(x, y=y), plain(x, y=y), rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, got = plain(x, y=y), lean(x, y=y)
    assert stream == [torch.float32, torch.bfloat16]
    assert got.dtype == ref.dtype == torch.float32
    assert not torch.equal(got, ref)
    torch.testing.assert_close(got, ref, rtol=0.05, atol=0.05 * ref.abs().mean().item())


@pytest.mark.slow
def test_train_compile_trains_like_eager_and_compiles_each_block(tmp_path):
    """``train.compile=true`` on a DiT: the trainer asks the backbone to compile, which compiles
    each block (one graph reused by all); the losses of the first steps equal the eager run's."""
    import json

    from torch._dynamo.utils import counters

    from onestep.api import compose
    from onestep.trainer import Trainer

    losses = {}
    for compiled in (False, True):
        cfg = compose(objective="flow-matching", backbone="dit", data="mnist", overrides=[
            f"output_dir={tmp_path}/{compiled}", "train.progress=false", "train.log_every=1", "train.steps=4",
            "train.batch_size=16", "backbone.size=P/7", "eval.metrics=[]", "sample.grid=4", f"train.compile={compiled}"])
        run = Trainer(cfg, console=False)
        blocks = run.engines["generator"].module.blocks
        assert [b._compiled_call_impl is not None for b in blocks] == [compiled] * len(blocks)
        graphs = counters["stats"]["unique_graphs"]
        run.fit()
        assert (counters["stats"]["unique_graphs"] > graphs) == compiled  # the compiled blocks really ran
        rows = [json.loads(line) for line in (tmp_path / str(compiled) / "metrics.jsonl").read_text().splitlines()]
        losses[compiled] = torch.tensor([r["velocity/loss"] for r in rows if "velocity/loss" in r])
    assert len(losses[True]) == 4
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-4, atol=1e-5)
