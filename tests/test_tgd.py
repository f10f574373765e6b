"""TGD masks, the gradient-masking engine, parameter counts, silent channels and --revive."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from helpers import alternating_masks, random_batch, stats_model

from tgdpet.kse import kse_scores, score_network
from tgdpet.models import DnCNN, count_parameters
from tgdpet.tgd import (
    attach,
    build_masks,
    check_masks,
    count_retrained,
    revive,
    silent_channels,
)


def _channel_tensors(model: DnCNN, i: int) -> dict[str, torch.Tensor]:
    """Every tensor indexed by the output channels of convs[i], by a name of its own."""
    out = {f"convs.{i}.weight": model.convs[i].weight, f"convs.{i}.bias": model.convs[i].bias}
    if 1 <= i <= len(model.bns):
        bn = model.bns[i - 1]
        for name in ("weight", "bias", "running_mean", "running_var"):
            out[f"bns.{i - 1}.{name}"] = getattr(bn, name)
    return out


def _train(model, masks, make_opt, steps=4, mode="activation", restore="hook", lr=1e-2, bn_stats="stored",
           read_kernels="freeze"):
    """A few steps of TGD; by default with the paper's masks (a frozen channel's kernels frozen whole)."""
    model.train()
    opt = make_opt(model.parameters(), lr)
    engine = attach(model, masks, mode=mode, optimizer=opt if restore == "hook" else None, bn_stats=bn_stats,
                    read_kernels=read_kernels)
    x, y = random_batch()
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        if restore == "manual":
            engine.restore_frozen()
    return engine


OPTIMIZERS = {
    "adam_wd": lambda p, lr: torch.optim.Adam(p, lr=lr, weight_decay=1e-2),
    "adamw_wd": lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=1e-1),
    "sgd_momentum_wd": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=1e-2),
}


@pytest.mark.parametrize("mode", ["activation", "parameter"])
@pytest.mark.parametrize("train, bn_stats", [(True, "batch"), (False, "batch"), (False, "stored")])
def test_forward_is_bit_identical(mode, train, bn_stats):
    """The engine changes no forward pass, except what stored statistics change in training mode (below)."""
    plain = stats_model()
    tgd = copy.deepcopy(plain)
    plain.train(train)
    tgd.train(train)
    x, _ = random_batch()
    with attach(tgd, alternating_masks(tgd), mode=mode, bn_stats=bn_stats):
        assert torch.equal(tgd(x), plain(x))


def _bn_by_hand(x: torch.Tensor, mean, var, bn) -> torch.Tensor:
    """BatchNorm written out in float64 for the given per-channel mean and variance."""
    view = (1, -1, 1, 1)
    x = x.double()
    scale = bn.weight.detach().double().view(view) / torch.sqrt(var.double().view(view) + bn.eps)
    return (x - mean.double().view(view)) * scale + bn.bias.detach().double().view(view)


def test_stored_statistics_normalise_frozen_channels_as_at_test_time():
    """In training mode, frozen channels use the running statistics and retrained ones the batch's."""
    model = stats_model()
    masks = alternating_masks(model)
    bn = model.bns[1]  # after convs[2]
    seen = {}
    mean, var = bn.running_mean.clone(), bn.running_var.clone()  # training-mode BN updates the buffers
    model.train()
    with attach(model, masks):  # the defaults: parameter mode, stored statistics
        handle = bn.register_forward_hook(lambda m, i, o: seen.update(x=i[0].detach(), y=o.detach()))
        model(random_batch()[0])
        handle.remove()
    x, keep = seen["x"], masks[2]
    stored = _bn_by_hand(x, mean, var, bn)
    batch = _bn_by_hand(x, x.double().mean((0, 2, 3)), x.double().var((0, 2, 3), unbiased=False), bn)
    torch.testing.assert_close(seen["y"][:, ~keep].double(), stored[:, ~keep], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen["y"][:, keep].double(), batch[:, keep], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(stored[:, ~keep], batch[:, ~keep], atol=1e-3)  # the two really differ here


@pytest.mark.parametrize("bn_stats", ["stored", "batch"])
def test_a_frozen_channel_fed_by_frozen_channels_computes_the_same_before_and_after_finetuning(bn_stats):
    """conv1 frozen (the default), conv2's frozen channels read only frozen maps: their output is bit-identical
    at test time after fine-tuning; with stored statistics also in training mode, where batch statistics
    would make it depend on the batch."""
    model = stats_model()
    masks = alternating_masks(model)
    masks[0] = torch.zeros_like(masks[0])
    frozen = ~masks[1]
    x, _ = random_batch(seed=5)
    seen = {}
    hook = lambda m, i, o: seen.__setitem__("y", o.detach()[:, frozen].clone())  # noqa: E731

    def conv2_out(train: bool) -> torch.Tensor:
        model.train(train)
        handle = model.bns[0].register_forward_hook(hook)
        with torch.no_grad():
            model(x)
        handle.remove()
        return seen["y"]

    at_test = conv2_out(False)
    _train(model, masks, OPTIMIZERS["adamw_wd"], steps=5, mode="parameter", bn_stats=bn_stats).detach()
    assert torch.equal(conv2_out(False), at_test)
    with attach(model, masks, bn_stats=bn_stats):
        in_training = conv2_out(True)
    if bn_stats == "stored":
        assert torch.equal(in_training, at_test)
    else:
        assert not torch.allclose(in_training, at_test, atol=1e-3)


@pytest.mark.parametrize("opt", ["adamw_wd", "sgd_momentum_wd"])
def test_read_kernels_of_retrained_maps_train_and_every_other_entry_stays_bit_identical(opt):
    """read_kernels='retrain' (the parameter mode's default): convs[i].weight[n, c] trains when output channel n is
    retrained or input map c (an output of convs[i - 1]) is; every other entry, and every per-channel tensor of a
    frozen channel, comes out bit-identical. Worked out here from the masks alone."""
    model = stats_model()
    masks = alternating_masks(model)
    masks[2] = torch.zeros_like(masks[2])  # conv3 frozen whole: its weight trains only where it reads conv2's maps
    before = copy.deepcopy(model)
    _train(model, masks, OPTIMIZERS[opt], steps=4, mode="parameter", read_kernels="retrain")
    for i, conv in enumerate(model.convs):
        old = before.convs[i].weight.detach()
        for n in range(conv.out_channels):
            for c in range(conv.in_channels):
                trains = bool(masks[i][n]) or (i > 0 and bool(masks[i - 1][c]))
                same = torch.equal(conv.weight.detach()[n, c], old[n, c])
                assert same != trains, (i, n, c, trains)
        for name, t in _channel_tensors(model, i).items():
            if not name.endswith(".weight") or name.startswith("bns"):
                old_t = _channel_tensors(before, i)[name].detach()
                assert torch.equal(t.detach()[~masks[i]], old_t[~masks[i]]), name
    # The last layer (frozen) learns to read the retrained maps of the layer before it, nothing else.
    last, prev = len(model.convs) - 1, len(model.convs) - 2
    moved = (model.convs[last].weight != before.convs[last].weight).any(dim=(0, 2, 3))
    assert torch.equal(moved, masks[prev])
    assert torch.equal(model.convs[last].bias, before.convs[last].bias)


def test_read_kernels_need_parameter_mode_and_count_as_retrained():
    model = stats_model()
    masks = alternating_masks(model)
    with pytest.raises(ValueError, match="parameter"):
        attach(model, masks, mode="activation", read_kernels="retrain")
    with attach(model, masks, mode="activation") as engine:
        assert engine.read_kernels == "freeze"  # the paper's masks, activation mode's default
        paper = engine.trainable_parameters()
    assert paper == count_retrained(model, masks).retrained_parameters
    with attach(model, masks) as engine:
        assert engine.read_kernels == "retrain"
        extra = sum(int((~masks[i]).sum()) * int(masks[i - 1].sum()) * 9 for i in range(1, len(model.convs)))
        assert engine.trainable_parameters() == paper + extra


def test_parameter_mode_gives_retrained_kernels_the_true_gradient():
    """Parameter mode (with batch statistics, the plain forward pass): retrained entries get exactly the plain
    network's gradient, frozen entries none."""
    model = stats_model()
    masks = alternating_masks(model)
    x, y = random_batch()
    model.train()
    plain = _grads(model, x, y)
    with attach(model, masks, mode="parameter", bn_stats="batch", read_kernels="freeze"):
        got = _grads(model, x, y)
    for i in range(len(model.convs)):
        keep = masks[i]
        for name, t in _channel_tensors(model, i).items():
            if name.endswith(("running_mean", "running_var")):
                continue
            assert torch.equal(got[name][keep], plain[name][keep]), name
            assert torch.count_nonzero(got[name][~keep]) == 0, name


@pytest.mark.parametrize("restore", ["hook", "manual"])
@pytest.mark.parametrize("mode", ["activation", "parameter"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_frozen_entries_stay_bit_identical(opt, mode, restore):
    model = stats_model()
    masks = alternating_masks(model)
    before = copy.deepcopy(model)
    _train(model, masks, OPTIMIZERS[opt], mode=mode, restore=restore)
    for i in range(len(model.convs)):
        keep = masks[i]
        old = _channel_tensors(before, i)
        for name, t in _channel_tensors(model, i).items():
            assert torch.equal(t.detach()[~keep], old[name].detach()[~keep]), name
            if keep.any():
                changed = (t.detach()[keep] != old[name].detach()[keep]).reshape(int(keep.sum()), -1).any(1)
                assert changed.all(), f"{name}: a retrained channel did not change"
    assert torch.equal(model.convs[-1].weight, before.convs[-1].weight)


@pytest.mark.parametrize("mode", ["activation", "parameter"])
def test_tgd_under_bf16_autocast_keeps_frozen_entries_and_masks_gradients(mode):
    """Mixed precision as the training loop runs it (autocast bf16 forward, fp32 loss and master weights)."""
    model = stats_model()
    masks = alternating_masks(model)
    before = copy.deepcopy(model)
    model.train()
    opt = OPTIMIZERS["adamw_wd"](model.parameters(), 1e-2)
    dtypes = []
    model.convs[2].register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    x, y = random_batch()
    with attach(model, masks, mode=mode, optimizer=opt, read_kernels="freeze"):
        for _ in range(4):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
            F.mse_loss(out.float(), y).backward()
            for i, keep in masks.items():
                for name, t in _channel_tensors(model, i).items():
                    if t.grad is None:
                        continue  # BN running statistics: buffers, no gradient
                    assert t.grad.dtype == torch.float32, name
                    assert torch.all(t.grad[~keep] == 0), f"{name}: a frozen channel got a gradient"
                    if keep.any():
                        assert t.grad[keep].abs().sum() > 0, f"{name}: no gradient reached the retrained channels"
            opt.step()
    assert set(dtypes) == {torch.bfloat16}  # the convolutions really ran in bf16
    for i in range(len(model.convs)):
        keep, old = masks[i], _channel_tensors(before, i)
        for name, t in _channel_tensors(model, i).items():
            assert t.dtype == torch.float32, name
            assert torch.equal(t.detach()[~keep], old[name].detach()[~keep]), name
            if keep.any():
                changed = (t.detach()[keep] != old[name].detach()[keep]).reshape(int(keep.sum()), -1).any(1)
                assert changed.all(), f"{name}: a retrained channel did not change"


def test_without_restore_weight_decay_moves_frozen_entries():
    # The trap the restore step exists for: AdamW decays parameters whose gradient is masked to 0.
    model = stats_model()
    masks = alternating_masks(model)
    before = copy.deepcopy(model)
    model.train()
    opt = OPTIMIZERS["adamw_wd"](model.parameters(), 1e-2)
    with attach(model, masks, read_kernels="freeze") as engine:
        x, y = random_batch()
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        frozen_w = ~masks[2]
        assert torch.all(model.convs[2].weight.grad[frozen_w] == 0)
        opt.step()
        assert not torch.equal(model.convs[2].weight[frozen_w], before.convs[2].weight[frozen_w])
        assert not torch.equal(model.bns[1].running_mean[frozen_w], before.bns[1].running_mean[frozen_w])
        engine.restore_frozen()
    assert torch.equal(model.convs[2].weight[frozen_w], before.convs[2].weight[frozen_w])
    assert torch.equal(model.bns[1].running_mean[frozen_w], before.bns[1].running_mean[frozen_w])


def _grads(model: DnCNN, x, y) -> dict[str, torch.Tensor]:
    model.zero_grad()
    F.mse_loss(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _reference_tgd_grads(model: DnCNN, masks, x, y) -> dict[str, torch.Tensor]:
    """The TGD layer written out: forward y, backward only through channels with mask 1."""

    def tgd(t, m):
        return torch.where(m.view(1, -1, 1, 1), t, t.detach())

    model.zero_grad()
    h = torch.relu(tgd(model.convs[0](x), masks[0]))
    for i, (conv, bn) in enumerate(zip(model.convs[1:-1], model.bns), start=1):
        h = torch.relu(tgd(bn(tgd(conv(h), masks[i])), masks[i]))
    F.mse_loss(x - model.convs[-1](h), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    grads["convs.7.weight"].zero_()  # the last conv is frozen through its parameters
    grads["convs.7.bias"].zero_()
    return grads


def test_activation_mode_matches_written_out_tgd_layer():
    model = stats_model()
    masks = alternating_masks(model)
    x, y = random_batch()
    model.train()
    expected = _reference_tgd_grads(copy.deepcopy(model), masks, x, y)
    with attach(model, masks, mode="activation", bn_stats="batch"):
        got = _grads(model, x, y)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-9, msg=name)


def test_conv_and_bn_output_gradients_of_frozen_channels_are_exactly_zero():
    """Both TGD layers of a block (after the conv and after the BN) see zero gradient in frozen channels."""
    model = stats_model()
    masks = alternating_masks(model)
    x, y = random_batch()
    model.train()
    seen: dict[str, torch.Tensor] = {}

    def keep_grad(name):
        def hook(module, inputs, output):
            output.register_hook(lambda g: seen.__setitem__(name, g.detach().clone()))
        return hook

    with attach(model, masks, mode="activation"):
        # Registered after TGD's own hooks, so they see the gradient that flows on.
        handles = [model.convs[2].register_forward_hook(keep_grad("conv3")),
                   model.bns[1].register_forward_hook(keep_grad("bn3")),
                   model.convs[0].register_forward_hook(keep_grad("conv1"))]
        F.mse_loss(model(x), y).backward()
    for h in handles:
        h.remove()
    for name, i in (("conv3", 2), ("bn3", 2), ("conv1", 0)):
        frozen = ~masks[i]
        assert torch.count_nonzero(seen[name][:, frozen]) == 0, name
        assert torch.count_nonzero(seen[name][:, ~frozen]) > 0, name


def test_masked_gradients_stay_channels_last():
    """The gradient leaving a TGD layer keeps the network's channels-last layout (no layout conversions)."""
    model = stats_model().to(memory_format=torch.channels_last)
    masks = alternating_masks(model)
    x, y = (t.contiguous(memory_format=torch.channels_last) for t in random_batch())
    model.train()
    seen: list[torch.Tensor] = []
    with attach(model, masks, mode="activation"):
        def record(module, inputs, output) -> None:  # returns None: the output is left as it is
            output.register_hook(lambda g: seen.append(g.detach()))

        handle = model.bns[1].register_forward_hook(record)
        F.mse_loss(model(x), y).backward()
        handle.remove()
    assert seen and seen[0].is_contiguous(memory_format=torch.channels_last)
    assert not seen[0].is_contiguous()  # really NHWC, not a tensor that is both (e.g. one channel)
    assert torch.count_nonzero(seen[0][:, ~masks[2]]) == 0


def test_activation_mode_blocks_gradient_through_frozen_layer_but_parameter_mode_does_not():
    model = stats_model()
    masks = {i: torch.ones(c.out_channels, dtype=torch.bool) for i, c in enumerate(model.convs)}
    masks[3] = torch.zeros(model.convs[3].out_channels, dtype=torch.bool)  # conv4 entirely frozen
    masks[7] = torch.zeros(model.convs[7].out_channels, dtype=torch.bool)
    x, y = random_batch()
    model.train()
    with attach(model, masks, mode="activation"):
        act = _grads(model, x, y)
    with attach(model, masks, mode="parameter", read_kernels="freeze"):
        par = _grads(model, x, y)
    for i in range(3):  # upstream of conv4: nothing arrives in activation mode
        assert torch.count_nonzero(act[f"convs.{i}.weight"]) == 0
        assert torch.count_nonzero(par[f"convs.{i}.weight"]) > 0
    for g in (act, par):
        assert torch.count_nonzero(g["convs.3.weight"]) == 0
        assert torch.count_nonzero(g["bns.2.weight"]) == 0
        assert torch.count_nonzero(g["convs.7.weight"]) == 0  # the last conv is frozen in both modes
        assert torch.count_nonzero(g["convs.5.weight"]) > 0  # downstream retrained layers learn
    plain = _grads(model, x, y)
    assert torch.count_nonzero(plain["convs.7.weight"]) > 0


def test_detach_restores_plain_training():
    model = stats_model()
    x, y = random_batch()
    model.train()
    expected = _grads(copy.deepcopy(model), x, y)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = attach(model, alternating_masks(model), optimizer=opt, read_kernels="freeze")
    engine.detach()
    assert all(torch.equal(g, expected[n]) for n, g in _grads(model, x, y).items())
    before = model.convs[2].weight.detach().clone()
    opt.step()  # the optimizer hook is gone: formerly frozen kernels move too
    assert (model.convs[2].weight != before).flatten(1).any(1).all()


def test_build_masks_follow_kse_of_next_layer_and_freeze_last():
    model = stats_model()
    phi = 0.5
    masks = build_masks(model, phi, conv1="retrain")
    assert sorted(masks) == list(range(len(model.convs)))
    for i in range(len(model.convs) - 1):
        assert torch.equal(masks[i], kse_scores(model.convs[i + 1].weight) < phi)
    assert not masks[len(model.convs) - 1].any()
    default = build_masks(model, phi)  # conv1 frozen by default, every other layer as above
    assert not default[0].any() and masks[0].any()
    assert all(torch.equal(default[i], masks[i]) for i in range(1, len(model.convs)))
    assert sum(int(m.sum()) for m in masks.values()) > 0


def test_conv1_option():
    model = stats_model()
    retrain = build_masks(model, 1.0, conv1="retrain")  # phi = 1 flags every channel but the best one
    freeze = build_masks(model, 1.0, conv1="freeze")
    assert int(retrain[0].sum()) == model.convs[0].out_channels - 1
    assert not freeze[0].any()
    assert all(torch.equal(retrain[i], freeze[i]) for i in range(1, len(model.convs)))
    before = model.convs[0].weight.detach().clone()
    _train(model, freeze, OPTIMIZERS["adam_wd"], steps=2)
    assert torch.equal(model.convs[0].weight, before)
    with pytest.raises(ValueError, match="conv1"):
        build_masks(model, 0.3, conv1="sometimes")


def test_check_masks_validates_and_freezes_missing_layers():
    model = stats_model()
    masks = check_masks(model, {1: [1, 0, 1, 0, 1, 0, 1, 0]})
    assert masks[1].dtype == torch.bool and masks[1].tolist() == [True, False] * 4
    assert not masks[0].any() and not masks[7].any()
    with pytest.raises(ValueError, match="shape"):
        check_masks(model, {1: [1, 0]})
    with pytest.raises(ValueError, match="conv index"):
        check_masks(model, {8: [1, 0, 1]})
    with pytest.raises(ValueError, match="0 and 1"):
        check_masks(model, {1: [2] * 8})


def _independent_count(model: DnCNN, masks) -> int:
    """Count masked entries parameter by parameter, from the parameter names."""
    total = 0
    for name, p in model.named_parameters():
        kind, index, _ = name.split(".")
        conv_index = int(index) if kind == "convs" else int(index) + 1  # bns[j] follows convs[j + 1]
        total += p.detach()[masks[conv_index]].numel()
    return total


def test_count_retrained_against_independent_count():
    model = stats_model()
    masks = build_masks(model, 0.6)
    count = count_retrained(model, masks)
    assert count.retrained_parameters == _independent_count(model, masks)
    assert count.total_parameters == count_parameters(model) == sum(layer.parameters for layer in count.layers)
    assert count.fraction == pytest.approx(count.retrained_parameters / count_parameters(model))
    assert count.layers[-1].retrained_parameters == 0


def test_tgd_squared_scores_the_finetuned_weights():
    model = stats_model()
    masks1 = build_masks(model, 0.5)
    scores_before = [ls.scores for ls in score_network(model, 0.5)]
    _train(model, masks1, OPTIMIZERS["adam_wd"], steps=5, lr=5e-2).detach()
    scores_after = score_network(model, 0.5)
    assert any(not torch.allclose(a.scores, b) for a, b in zip(scores_after, scores_before))
    masks2 = build_masks(model, 0.5)
    assert any(not torch.equal(masks1[i], masks2[i]) for i in masks1)
    for ls in scores_after:  # conv1 is frozen by default
        assert torch.equal(masks2[ls.source], ls.scores < 0.5 if ls.source else torch.zeros_like(ls.meaningless))
    # A second TGD round honours the new masks.
    before = copy.deepcopy(model)
    _train(model, masks2, OPTIMIZERS["adamw_wd"], steps=2)
    for i in range(len(model.convs)):
        assert torch.equal(model.convs[i].weight[~masks2[i]], before.convs[i].weight[~masks2[i]])


@pytest.mark.parametrize("mode", ["activation", "parameter"])
def test_engine_on_device(device, mode):
    model = stats_model().to(device)
    masks = build_masks(model, 0.6)
    before = copy.deepcopy(model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-1)
    x, y = (t.to(device) for t in random_batch())
    with attach(model, masks, mode=mode, optimizer=opt, bn_stats="batch", read_kernels="freeze"):
        assert torch.equal(model(x), copy.deepcopy(before).train()(x))
        for _ in range(3):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    for i in range(len(model.convs)):
        old = _channel_tensors(before, i)
        for name, t in _channel_tensors(model, i).items():
            assert torch.equal(t.detach()[~masks[i].to(device)], old[name].detach()[~masks[i].to(device)]), name


# --------------------------------------------------------------------------- silent channels


def _silence(model: DnCNN, i: int, c: int) -> None:
    """Make channel ``c`` of conv ``i`` output exactly zero after its ReLU (as the channel penalty leaves it)."""
    with torch.no_grad():
        bn = model.bns[i - 1]
        bn.weight[c], bn.bias[c] = 0.0, -1.0


def test_silent_channels_are_found_and_revived_without_changing_the_output():
    model = stats_model().eval()
    _silence(model, 2, 1)
    x, y = random_batch()
    silent = silent_channels(model, x)
    assert [int(i) for i in silent[2].nonzero().flatten()] == [1]
    assert all(not bool(silent[i].any()) for i in silent if i != 2)
    before_out = model(x)
    masks = {i: torch.zeros(c.out_channels, dtype=torch.bool) for i, c in enumerate(model.convs)}
    masks[2][1] = masks[2][0] = True  # channel 0 is retrained but not silent: it must stay as it is
    masks[3][2] = True  # silent in no layer but 2
    before = copy.deepcopy(model.state_dict())
    assert revive(model, masks, silent, generator=torch.Generator().manual_seed(0)) == {2: 1}
    after = model.state_dict()
    assert not torch.equal(after["convs.2.weight"][1], before["convs.2.weight"][1])  # new kernel
    assert after["bns.1.weight"][1] == 1.0 and after["bns.1.bias"][1] == 0.0
    assert after["bns.1.running_mean"][1] == 0.0 and after["bns.1.running_var"][1] == 1.0
    assert torch.equal(after["convs.3.weight"][:, 1], torch.zeros_like(after["convs.3.weight"][:, 1]))
    for name, value in before.items():  # nothing else moved
        changed = ~torch.isclose(after[name].float(), value.float(), atol=0, rtol=0)
        if name in ("convs.2.weight", "convs.2.bias", "bns.1.weight", "bns.1.bias", "bns.1.running_mean",
                    "bns.1.running_var"):  # fmt: skip
            changed[1] = False
        if name == "convs.3.weight":
            changed[:, 1] = False
        assert not bool(changed.any()), name
    torch.testing.assert_close(model(x), before_out, rtol=0, atol=1e-6)  # it carried nothing, nothing reads it
    assert not bool(silent_channels(model, x)[2][1])  # alive again
    # and it can learn: the kernels reading it get a gradient at once
    model.train()
    F.mse_loss(model(x), y).backward()
    assert model.convs[3].weight.grad[:, 1].abs().sum() > 0
