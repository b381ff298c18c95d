import torch
import torch.nn.functional as F
from torch import nn

import visq
from visq.modules import QuantConv2d, QuantLinear


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_dequantized_weight_in_float_layer_gives_same_output():
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(4, 3, 8, 8)
    visq.quantize(net, "w4a16", calib=x, progress=False)
    assert isinstance(net.conv, QuantConv2d) and isinstance(net.fc, QuantLinear)
    w_conv = net.conv.weight_quantizer(net.conv.weight)
    w_fc = net.fc.weight_quantizer(net.fc.weight)
    expected = F.linear(F.conv2d(x, w_conv, net.conv.bias, padding=1).mean(dim=(2, 3)), w_fc, net.fc.bias)
    assert torch.allclose(net(x), expected, atol=1e-6)
    assert not torch.equal(w_fc, net.fc.weight)  # 4-bit weights really differ from float


def test_freeze_caches_and_matches():
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(4, 3, 8, 8)
    visq.quantize(net, "w4a8", calib=x, progress=False)
    before = net(x)
    visq.freeze(net)
    assert net.fc.frozen_weight is not None
    assert "fc.frozen_weight" not in net.state_dict()
    assert torch.equal(net(x), before)
    visq.unfreeze(net)
    assert net.fc.frozen_weight is None


def test_quant_layers_share_float_parameters():
    net = Net()
    weight = net.fc.weight
    visq.quantize(net, "w8a8", calib=torch.randn(2, 3, 8, 8), progress=False)
    assert net.fc.weight is weight


def test_bf16_model_stays_bf16():
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(4, 3, 8, 8)
    visq.quantize(net, "w8a8", calib=x, progress=False)
    ref = net(x)
    net.to(torch.bfloat16)
    out = net(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref, atol=0.05, rtol=0.05)
