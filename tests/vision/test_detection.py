"""features_only backbones in torchvision's detectors: a Faster R-CNN on a ConvFormer with an FPN."""
import pytest
import torch
from torchvision.models.detection import FasterRCNN

import convformer
from convformer.vision.detection import fpn_backbone


def _targets():
    return [dict(boxes=torch.tensor([[10.0, 10.0, 50.0, 60.0]]), labels=torch.tensor([1])),
            dict(boxes=torch.tensor([[5.0, 20.0, 80.0, 90.0], [30.0, 30.0, 60.0, 60.0]]), labels=torch.tensor([2, 1]))]


def test_faster_rcnn_on_a_convformer_fpn_trains_and_detects():
    torch.manual_seed(0)
    backbone = fpn_backbone("convformer_nano", out_channels=64, frozen_stages=1)
    images = [torch.rand(3, 96, 120), torch.rand(3, 100, 96)]
    maps = backbone(torch.rand(2, 3, 96, 128))
    assert list(maps) == ["0", "1", "2", "3", "pool"]
    assert [tuple(m.shape[1:]) for m in maps.values()] == [(64, 24, 32), (64, 12, 16), (64, 6, 8), (64, 3, 4),
                                                           (64, 2, 2)]
    detector = FasterRCNN(backbone, num_classes=3, min_size=96, max_size=128).train()
    losses = detector(images, _targets())
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    body = backbone.body
    frozen = list(body.stem.parameters()) + list(body.stages[0].parameters())
    assert all(p.grad is None and not p.requires_grad for p in frozen)
    trained = [p for s in body.stages[1:] for p in s.parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    detector.eval()
    with torch.no_grad():
        out = detector(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4 and len(out[0]["boxes"]) == len(out[0]["scores"])


def test_fpn_backbone_errors():
    with pytest.raises(convformer.ConvformerError, match="frozen_stages"):
        fpn_backbone("convformer_nano", frozen_stages=9)
    with pytest.raises(convformer.ConvformerError, match="not an image classification backbone"):
        fpn_backbone("cfsr_x2")
    with pytest.raises(convformer.ConvformerError, match="features_only"):
        from convformer.vision.detection import FPNBackbone
        FPNBackbone(convformer.create_model("convformer_nano"))
