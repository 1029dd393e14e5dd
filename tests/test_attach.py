"""csg.attach on every family of model: the gated layer it picks, a step on each path, a
checkpoint round trip, the features MI reads, the correlation's filters and CAM's head."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from csg.config import TrainConfig
from csg.method import engine
from csg.method.attach import AttachError, attach
from csg.method.features import gap_features
from csg.method.gate import ClassSpecificGate
from csg.method.models import build_model
from csg.method.mutual_info import mi_matrix
from csg.store import checkpoint
from csg.testing.written_out import WrittenOut
from tests.helpers import OwnNet, tiny_vit

CPU = torch.device("cpu")
CLASSES = 10  # digits-scenes: 10 classes of 1-channel 32x32 images


# spec -> (the layer picked, K, the conv whose filters are the gated channels, a Linear(GAP(A)) head)
FAMILIES = {
    "torchvision:resnet18": ("layer4", 512, "layer4.1.conv2", True),
    "torchvision:densenet121": ("features", 1024, None, True),  # a concatenation, then a norm: no conv
    "torchvision:mobilenet_v3_small": ("features", 576, "features.12.0", False),  # an MLP head
    "torchvision:efficientnet_b0": ("features", 1280, "features.8.0", True),
    "torchvision:regnet_y_400mf": ("trunk_output", 440, "trunk_output.block4.block4-5.f.c.0", True),
    "tests.helpers:tiny_vit": ("encoder", 64, None, False),  # tokens; the head reads the class token
    "tests.helpers:own_net": ("body", 24, "body.4", False),
    "torchvision:vgg11_bn": ("avgpool", 512, "features.25", False),
    "torchvision:convnext_tiny": ("features", 768, None, False),  # ends on a Linear, then a LayerNorm head
}
HEAVY = {"torchvision:vgg11_bn", "torchvision:convnext_tiny"}  # 133M and 28M parameters


def families():
    return [pytest.param(spec, marks=pytest.mark.slow) if spec in HEAVY else spec for spec in FAMILIES]


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 32, 32, generator=g), torch.arange(n) % 3


@pytest.mark.parametrize("spec", families())
def test_every_family_trains_both_paths_round_trips_and_yields_features(spec, tmp_path):
    layer, k, producer, linear = FAMILIES[spec]
    torch.manual_seed(0)
    model = build_model(spec, CLASSES, in_channels=1, mean=(0.5,), std=(0.25,))
    assert (model.layer, model.num_filters, model.producer) == (layer, k, producer)
    assert (model.linear_head is not None) == linear

    cfg = TrainConfig(dataset="digits-scenes", model=spec, epochs=2, lr=0.05, weight_decay=1e-4)
    gate = ClassSpecificGate(CLASSES, k)
    optimizers = engine.build_optimizers(model, gate, cfg)
    trained = {id(p) for group in optimizers["std"].param_groups for p in group["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}  # the whole model, head included
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loader = [_batch()]
    loss = engine.CSGLoss.of(cfg, float(k))
    engine.train_one_epoch(model, gate, loader, "std", optimizers["std"], loss, CPU)
    with torch.no_grad():
        gate.weight.mul_(0.5)  # inside the box, so the step's gradient is not all projected away
    g_before = gate.weight.detach().clone()
    engine.train_one_epoch(model, gate, loader, "csg", optimizers["csg"], loss, CPU)
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert not unchanged, f"never updated: {unchanged[:5]}"
    assert not torch.equal(gate.weight, g_before)  # G got a gradient and stepped
    assert torch.allclose(gate.matrix.max(dim=0).values, torch.ones(k))  # every column's max is 1

    checkpoint.save(tmp_path, model, gate, optimizers, engine.build_schedulers(optimizers, cfg), cfg, 0, [])
    restored, saved_cfg, _ = checkpoint.restore_model(tmp_path)
    images, labels = _batch(8, seed=1)
    model.eval()
    assert saved_cfg.model == spec and torch.equal(restored(images), model(images))

    features = gap_features(restored, DataLoader(TensorDataset(images, labels), batch_size=4), CPU)
    assert features["features"].shape == (8, k) and np.isfinite(features["features"]).all()
    assert mi_matrix(features["features"], features["labels"], 3).shape == (k, 3)


def test_the_gate_multiplies_every_token_of_a_vision_transformer_before_its_head():
    """logits_csg = head(G[y] * (encoder output)[:, 0]): the class token's channels, gated."""
    torch.manual_seed(0)
    vit = tiny_vit(4).eval()
    nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero
    model = attach(vit, 4, quiet=True)
    x = torch.rand(3, 3, 32, 32)
    rows = torch.rand(3, 64)
    normalised = (x - 0.5) / 0.25
    tokens = vit.encoder(torch.cat([vit.class_token.expand(3, -1, -1), vit._process_input(normalised)], dim=1))
    expected = vit.heads(tokens[:, 0] * rows)
    assert torch.allclose(model(x, rows), expected, atol=1e-6)
    assert not torch.allclose(model(x), expected, atol=1e-3)  # the gate changed the logits
    assert model.features(x).shape == (3, 64, 4, 4)  # the 16 patch tokens on their 4x4 grid


def test_the_attached_resnet20_equals_the_written_out_path_bit_for_bit():
    """Logits, loss, and after a CSG step G and every weight, on the same weights and batch."""
    images, labels = _batch(8)
    cfg = TrainConfig(lr=0.05, epochs=2)
    outcomes = []
    for wrap in (lambda model: model, WrittenOut):
        torch.manual_seed(0)
        model = build_model("resnet20", 3, in_channels=1, mean=(0.5,), std=(0.3,))
        gate = ClassSpecificGate(3, 64)
        with torch.no_grad():
            gate.weight.mul_(0.7)
        logits = wrap(model)(images, gate(labels))
        optimizer = engine.build_optimizers(model, gate, cfg)["csg"]
        stats = engine.train_one_epoch(wrap(model), gate, [(images, labels)], "csg", optimizer,
                                       engine.CSGLoss.of(cfg, 64.0), CPU)
        outcomes.append((logits.detach(), stats.loss_total, gate.weight.detach().clone(),
                         [p.detach().clone() for p in model.parameters()]))
    (logits_a, loss_a, g_a, weights_a), (logits_b, loss_b, g_b, weights_b) = outcomes
    assert torch.equal(logits_a, logits_b) and loss_a == loss_b and torch.equal(g_a, g_b)
    assert all(torch.equal(a, b) for a, b in zip(weights_a, weights_b))


def test_a_layer_by_name_or_module_and_the_wrong_ones():
    assert attach(OwnNet(5), 5, "body.2", quiet=True).num_filters == 16
    net = OwnNet(5)
    assert attach(net, 5, net.body[2], quiet=True).layer == "body.2"
    with pytest.raises(AttachError, match="not part of the model"):
        attach(OwnNet(5), 5, nn.ReLU())
    with pytest.raises(AttachError, match="'head.2' does not output a feature map"):
        attach(OwnNet(5), 5, "head.2")
    with pytest.raises(AttachError, match="'nowhere' is not a module that ran"):
        attach(OwnNet(5), 5, "nowhere")
    with pytest.raises(AttachError, match=r"returns \(1, 5\).*num_classes=7"):
        attach(OwnNet(5), 7)


def test_attach_names_the_layer_it_picked(capsys):
    attach(OwnNet(5), 5)
    assert capsys.readouterr().out.strip() == "csg.attach: gating 'body' of OwnNet (K = 24)"


def test_an_unknown_frozen_module_names_the_top_level_ones():
    model = attach(OwnNet(5), 5, quiet=True)
    frozen = {id(p) for p in model.net.body.parameters()}
    assert frozen.isdisjoint(id(p) for p in model.trainable_parameters("body"))
    with pytest.raises(ValueError, match="no module 'trunk' in OwnNet; its top-level modules: body, head"):
        model.trainable_parameters("trunk")
