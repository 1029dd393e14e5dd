import pytest
import torch

from csg.method.models import (
    LAST_CONV_FILTERS,
    MODEL_CHOICES,
    build_model,
    load_backbone_weights,
)


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "alexnet", "resnet18", "resnet50"])
def test_last_conv_map_and_logits(name):
    size = 64 if name.startswith("resnet") and name not in ("resnet20", "resnet32") else 32
    model = build_model(name, num_classes=7).eval()
    x = torch.rand(2, 3, size, size)
    activation = model.features(x)
    assert activation.shape[:2] == (2, LAST_CONV_FILTERS[name]) == (2, model.num_filters)
    assert model(x).shape == (2, 7)


def test_every_model_choice_builds():
    for name in MODEL_CHOICES:
        assert build_model(name, 3).num_filters == LAST_CONV_FILTERS[name]


def test_gated_forward_equals_hand_computation():
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=3, in_channels=1, mean=(0.3,), std=(0.2,)).eval()
    x = torch.rand(4, 1, 8, 8)
    rows = torch.rand(4, 64)
    activation = model.features(x)
    pooled = (activation * rows[:, :, None, None]).mean(dim=(2, 3))
    expected = pooled @ model.fc.weight.T + model.fc.bias
    std, csg = model(x, rows, both_paths=True)
    assert torch.allclose(csg, expected, atol=1e-6)
    assert torch.allclose(std, model(x), atol=1e-6)


def test_normalisation_lives_inside_the_model():
    model = build_model("resnet20", 2, in_channels=1, mean=(0.5,), std=(0.25,)).eval()
    x = torch.rand(2, 1, 8, 8)
    unnormalised = model.stages["layer3"](model.stages["layer2"](model.stages["layer1"](
        model.stages["stem"]((x - 0.5) / 0.25))))
    assert torch.allclose(model.features(x), unnormalised)


def test_stage_parameters_freeze_lower_stages():
    model = build_model("resnet20", 3)
    all_params = model.stage_parameters("none")
    top = model.stage_parameters("layer2")
    assert len(all_params) == len(list(model.parameters()))
    layer3 = {id(p) for p in model.stages["layer3"].parameters()} | {id(p) for p in model.fc.parameters()}
    assert {id(p) for p in top} == layer3
    with pytest.raises(ValueError, match="frozen"):
        model.stage_parameters("layer9")


def test_local_weights_load_and_missing_file_is_clear(tmp_path):
    import torchvision

    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    model = build_model("resnet18", num_classes=5, weights=str(path))
    assert torch.equal(model.stages["stem"][0].weight, source.conv1.weight)
    assert model.fc.out_features == 5
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        load_backbone_weights(source, tmp_path / "absent.pth")
