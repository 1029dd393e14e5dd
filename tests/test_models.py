import pytest
import torch
import torchvision

from csg.method.models import BUILT_IN, ModelSpecError, WeightsError, build_model, load_weights

K_OF = {"resnet20": 64, "resnet32": 64, "resnet56": 64, "resnet110": 64, "alexnet": 256, "resnet18": 512,
        "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}  # Appendix B's models


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "alexnet", "resnet18", "resnet50"])
def test_last_conv_map_and_logits(name):
    size = 64 if name.startswith("resnet") and name not in ("resnet20", "resnet32") else 32
    model = build_model(name, num_classes=7).eval()
    x = torch.rand(2, 3, size, size)
    activation = model.features(x)
    assert activation.shape[:2] == (2, K_OF[name]) == (2, model.num_filters)
    assert model(x).shape == (2, 7)


def test_every_built_in_model_gates_its_last_stage():
    for name in BUILT_IN:
        model = build_model(name, 3)
        assert (model.num_filters, model.layer) == (K_OF[name], f"stages.{list(model.net.stages)[-1]}")


def test_gated_forward_equals_hand_computation():
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=3, in_channels=1, mean=(0.3,), std=(0.2,)).eval()
    x = torch.rand(4, 1, 8, 8)
    rows = torch.rand(4, 64)
    activation = model.features(x)
    pooled = (activation * rows[:, :, None, None]).mean(dim=(2, 3))
    fc = model.net.fc
    assert torch.equal(model(x, rows), fc(pooled))  # the CSG path: bit for bit
    std, csg = model(x, rows, both_paths=True)
    assert torch.allclose(csg, pooled @ fc.weight.T + fc.bias, atol=1e-6)
    assert torch.allclose(std, model(x), atol=1e-6)


def test_normalisation_lives_inside_the_model():
    model = build_model("resnet20", 2, in_channels=1, mean=(0.5,), std=(0.25,)).eval()
    x = torch.rand(2, 1, 8, 8)
    stages = model.net.stages
    unnormalised = stages["layer3"](stages["layer2"](stages["layer1"](stages["stem"]((x - 0.5) / 0.25))))
    assert torch.allclose(model.features(x), unnormalised)


def test_a_stage_freezes_it_and_those_before_and_module_names_freeze_themselves():
    model = build_model("resnet20", 3)
    assert len(model.trainable_parameters("none")) == len(list(model.parameters()))
    layer3 = {id(p) for p in model.net.stages["layer3"].parameters()} | {id(p) for p in model.net.fc.parameters()}
    assert {id(p) for p in model.trainable_parameters("layer2")} == layer3
    lower = {id(p) for name in ("stem", "layer1", "layer2") for p in model.net.stages[name].parameters()}
    assert {id(p) for p in model.trainable_parameters("stages.layer3,fc")} == lower
    with pytest.raises(ValueError, match="no module 'layer9'.*stem, layer1, layer2, layer3"):
        model.trainable_parameters("layer9")


def test_local_weights_load_and_a_head_of_another_size_is_replaced(tmp_path, capsys):
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    model = build_model("resnet18", num_classes=5, weights=str(path))
    assert torch.equal(model.net.stages["stem"][0].weight, source.conv1.weight)
    assert model.net.fc.out_features == 5
    other = build_model("torchvision:resnet18", num_classes=5, weights=str(path))
    assert torch.equal(other.net.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert "replaced the head 'fc'" in capsys.readouterr().out
    with pytest.raises(WeightsError, match="weights file not found"):
        load_weights(source, tmp_path / "absent.pth", 1000)
    with pytest.raises(WeightsError, match="does not fit"):
        build_model("torchvision:mobilenet_v3_small", num_classes=5, weights=str(path))


def test_densenet_legacy_key_names_load(tmp_path):
    source = torchvision.models.densenet121(weights=None, num_classes=4)
    legacy = {key.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): value
              for key, value in source.state_dict().items()}
    assert legacy.keys() != source.state_dict().keys()
    torch.save(legacy, tmp_path / "d.pth")
    model = build_model("torchvision:densenet121", num_classes=4, weights=str(tmp_path / "d.pth"))
    assert all(torch.equal(a, b) for a, b in zip(model.net.state_dict().values(), source.state_dict().values()))


@pytest.mark.parametrize("spec, message", [
    ("vgg99", "unknown model 'vgg99'"),
    ("torchvision:resnet9000", "torchvision has no classification model"),
    ("no_such_package.models:build", "cannot import 'no_such_package.models'"),
    ("csg.method.models:NOT_THERE", "no callable 'NOT_THERE'"),
])
def test_a_spec_that_does_not_resolve_is_one_line(spec, message):
    with pytest.raises(ModelSpecError, match=message):
        build_model(spec, 3)


def test_timm_without_timm_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "timm" else real(name, *a))
    with pytest.raises(ModelSpecError, match=r"pip install 'csg-ray\[timm\]'"):
        build_model("timm:resnet18", 3)


def test_a_timm_model_by_name_is_gated_on_its_last_feature_map():
    pytest.importorskip("timm", reason="timm:NAME needs the timm extra (pip install -e '.[timm]')")
    model = build_model("timm:resnet18", 5, in_channels=1, mean=(0.5,), std=(0.25,))
    assert (model.layer, model.num_filters) == ("layer4", 512) and model.linear_head is not None
    assert model(torch.rand(2, 1, 64, 64), torch.rand(2, 512)).shape == (2, 5)
