import pytest
import torch

from lensfinder.models import create_model, list_models


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_report_architectures_have_the_reports_parameter_counts():
    # Hand count from report sections 2.2.2 / 3.2.2 (3 x 64 x 64 input): conv (k*k*in*out + out) + BN (2 * out) per block.
    blocks = {32: 3 * 3 * 3 * 32 + 32 + 64, 64: 9 * 32 * 64 + 64 + 128, 128: 9 * 64 * 128 + 128 + 256, 256: 9 * 128 * 256 + 256 + 512}
    cnn4 = sum(blocks.values()) + (4096 * 512 + 512) + (512 * 3 + 3)
    cnn3 = blocks[32] + blocks[64] + blocks[128] + (8192 * 512 + 512) + (512 * 2 + 2)
    assert _count(create_model("report-cnn4", 3, 3)) == cnn4 == 2_488_579
    assert _count(create_model("report-cnn3", 3, 2)) == cnn3 == 4_289_538


def test_report_classifier_input_follows_image_size():
    assert create_model("report-cnn4", 1, 3, image_size=64).head[0].in_features == 4096
    assert create_model("report-cnn3", 3, 2, image_size=64).head[0].in_features == 8192
    assert create_model("report-cnn4", 1, 3, image_size=160).head[0].in_features == 256 * 10 * 10
    with pytest.raises(ValueError, match="divisible by 16"):
        create_model("report-cnn4", 1, 3, image_size=150)


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="report-cnn3"):
        create_model("vgg-99", 3, 2)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_trains_and_exposes_features(name):
    torch.manual_seed(0)
    model = create_model(name, 3, 2, image_size=64)
    x = torch.randn(4, 3, 64, 64)
    model.eval()  # dropout off, so features -> head reproduces forward exactly
    features = model.forward_features(x)
    assert features.shape[0] == 4 and features.ndim == 2
    torch.testing.assert_close(model.head(features), model(x))
    model.train()
    logits = model(x)
    assert logits.shape == (4, 2)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_takes_150_pixel_images_or_refuses_them_clearly(name):
    # The DeepLense 150 x 150 sets (Model I, Common Test I): a model either classifies them or says why not.
    try:
        model = create_model(name, 1, 3, image_size=150)
    except ValueError as err:
        assert "150" in str(err)
        return
    model.eval()
    logits = model(torch.randn(2, 1, 150, 150))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
