"""The D4-equivariant layers and models, and D4 test-time averaging: exact symmetry checks on random inputs."""

import pytest
import torch

from lensfinder.data.transforms import d4_transform
from lensfinder.models import create_model, list_models
from lensfinder.models.equivariant import INV, MULT, GroupConv, LiftConv, d4_act
from lensfinder.train.module import LensModule

D4_MODELS = [name for name in list_models() if name.startswith("d4-")]


def _act_on_group_features(f: torch.Tensor, h: int) -> torch.Tensor:
    """The regular representation: rotate/flip each map by h and move orientation g to h g."""
    b, c, height, width = f.shape
    f = f.view(b, c // 8, 8, height, width)[:, :, [MULT[INV[h]][g] for g in range(8)]]
    return d4_act(f, h).reshape(b, c, height, width)


def test_group_table_is_the_dihedral_group_of_order_8():
    assert all(MULT[0][a] == a == MULT[a][0] for a in range(8))
    assert all(MULT[a][INV[a]] == 0 for a in range(8))
    assert all(MULT[MULT[a][b]][c] == MULT[a][MULT[b][c]] for a in range(8) for b in range(8) for c in range(8))
    assert any(MULT[a][b] != MULT[b][a] for a in range(8) for b in range(8))  # D4 is not abelian
    probe = torch.arange(9.0).view(3, 3)
    assert all(torch.equal(d4_act(probe, k), d4_transform(probe, k)) for k in range(8))  # one convention everywhere


@pytest.mark.parametrize("h", range(8))
def test_lift_and_group_convolutions_are_equivariant(h):
    torch.manual_seed(h)
    lift, conv = LiftConv(3, 2, 3, padding=1).double(), GroupConv(2, 3, 3, padding=1).double()
    down = GroupConv(3, 2, 4, stride=2, padding=1).double()  # even kernel, stride 2: still exact on even sizes
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(lift(d4_act(x, h)), _act_on_group_features(lift(x), h))
    torch.testing.assert_close(conv(lift(d4_act(x, h))), _act_on_group_features(conv(lift(x)), h))
    torch.testing.assert_close(down(conv(lift(d4_act(x, h)))), _act_on_group_features(down(conv(lift(x))), h))


@pytest.mark.parametrize("name", D4_MODELS)
def test_d4_models_are_exactly_invariant(name):
    torch.manual_seed(0)
    model = create_model(name, 3, 3, image_size=64).double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    reference = model(x)
    for k in range(1, 8):
        torch.testing.assert_close(model(d4_transform(x, k)), reference)


def test_d4_models_refuse_odd_image_sides():
    model = create_model(D4_MODELS[0], 1, 3).eval()
    with pytest.raises(ValueError, match="even image sides"):
        model(torch.randn(1, 1, 63, 63))


def test_tta_predictions_are_invariant_to_d4_for_any_model():
    torch.manual_seed(0)
    module = LensModule(task="lensfinding", model_name="resnet-s", in_channels=3, num_classes=2, image_size=64,
                        class_names=["nonlens", "lens"], normalization={"kind": "asinh"}, class_weights=None, lr=1e-3,
                        weight_decay=0.0, scheduler="onecycle", augment=True, tta=True).double().eval()
    x = torch.rand(3, 3, 64, 64, dtype=torch.float64)
    reference = module.predict_proba(x)
    for k in range(1, 8):
        torch.testing.assert_close(module.predict_proba(d4_transform(x, k)), reference)
    assert not torch.allclose(module.predict_proba(d4_transform(x, 1), tta=False), module.predict_proba(x, tta=False))


@pytest.mark.parametrize("name", ["resnet-s", "resnet-m", *D4_MODELS])
def test_folding_batch_norm_keeps_the_outputs_and_needs_eval_mode(name):
    torch.manual_seed(0)
    model = create_model(name, 3, 2)
    with pytest.raises(RuntimeError, match="eval mode"):
        model.fold_batchnorm()
    model.train()
    for _ in range(3):  # running statistics away from their initial 0 / 1
        model(torch.randn(16, 3, 64, 64) * 3 + 1)
    model.eval()
    x = torch.randn(4, 3, 64, 64)
    reference = model(x)
    folded = model.fold_batchnorm()
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert not any(isinstance(m, (LiftConv, GroupConv)) for m in folded.modules())  # D4: plain convolutions now
    torch.testing.assert_close(folded(x), reference, rtol=1e-4, atol=1e-5)
    if name in D4_MODELS:  # the plain convolutions keep the exact invariance
        torch.testing.assert_close(folded(d4_transform(x, 5)), reference, rtol=1e-4, atol=1e-5)


def test_for_inference_folds_a_copy_and_leaves_the_trained_module_alone():
    torch.manual_seed(0)
    module = LensModule(task="lensfinding", model_name="resnet-s", in_channels=3, num_classes=2, image_size=64,
                        class_names=["nonlens", "lens"], normalization={"kind": "asinh"}, class_weights=None, lr=1e-3,
                        weight_decay=0.0, scheduler="onecycle", augment=True, tta=True)
    module.train()
    module(torch.rand(8, 3, 64, 64))
    module.eval()
    x = torch.rand(5, 3, 64, 64)
    scoring = module.for_inference()
    torch.testing.assert_close(scoring.predict_proba(x), module.predict_proba(x), rtol=1e-4, atol=1e-5)
    assert module.training is False and any(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in scoring.modules())
