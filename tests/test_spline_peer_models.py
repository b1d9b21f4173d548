"""The spline engine on models its authors did not write: Captum's own test models (captum.testing.helpers).

Each piecewise-affine model gives A equal to the Jacobian computed by ``torch.func.jacrev`` on the plain model (an
independent computation), in float64 and float32; the models that end in a softmax are refused with an error that
names the softmax, and become exact once it is replaced by the identity (the logits).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlens import NotPiecewiseAffineError
from cnnlens.spline import affine_map

bm = pytest.importorskip("captum.testing.helpers.basic_models")

#: (constructor, per-sample input shape) of Captum's single-input piecewise-affine test models
PIECEWISE = {
    "BasicModel": (bm.BasicModel, (4,)),
    "BasicLinearReLULinear": (lambda: bm.BasicLinearReLULinear(6, bias=True), (6,)),
    "BasicModelWithReusedModules": (bm.BasicModelWithReusedModules, (3,)),
    "BasicModelWithReusedLinear": (bm.BasicModelWithReusedLinear, (3,)),
    "LinearMaxPoolLinearModel": (bm.LinearMaxPoolLinearModel, (4,)),
    "BasicModel_MaxPool_ReLU": (bm.BasicModel_MaxPool_ReLU, (2, 6)),
    "BasicModel_MaxPool_ReLU(inplace)": (lambda: bm.BasicModel_MaxPool_ReLU(inplace=True), (2, 6)),
    "SimpleLRPModel(inplace)": (lambda: bm.SimpleLRPModel(inplace=True), (3,)),
    "Conv1dSeqModel": (bm.Conv1dSeqModel, (4, 1000)),
    "BasicModel_MultiLayer": (bm.BasicModel_MultiLayer, (3,)),
    "BasicModel_ConvNet_One_Conv": (bm.BasicModel_ConvNet_One_Conv, (1, 4, 4)),
    "BasicModel_ConvNetWithPaddingDilation": (bm.BasicModel_ConvNetWithPaddingDilation, (1, 6, 6)),
}
#: models whose forward ends in a softmax module named ``softmax``
SOFTMAX = {
    "BasicModel_ConvNet": (bm.BasicModel_ConvNet, (1, 10, 10)),
    "BasicModel_ConvNet_MaxPool1d": (bm.BasicModel_ConvNet_MaxPool1d, (1, 10)),
    "BasicModel_ConvNet_MaxPool3d": (bm.BasicModel_ConvNet_MaxPool3d, (1, 10, 10, 10)),
}
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def _jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    def one(z: torch.Tensor) -> torch.Tensor:
        return model(z[None]).reshape(-1)

    return torch.func.vmap(torch.func.jacrev(one))(x).reshape(x.shape[0], -1, x[0].numel()).detach()


def _randomise(model: nn.Module) -> nn.Module:
    """Random weights (several Captum models hold hand-set weights with many ties) and eval mode."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def _check(model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> None:
    x = torch.randn(5, *shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    res = affine_map(model, x)
    jac = _jacobian(model, x)
    scale = jac.abs().amax().clamp_min(1.0)
    assert res.A.shape == jac.shape
    assert float((res.A - jac).abs().max() / scale) <= TOL[dtype]
    with torch.no_grad():
        f = model(x).reshape(x.shape[0], -1)
    ax = torch.einsum("ncd,nd->nc", res.A, x.reshape(x.shape[0], -1))
    assert float((ax + res.B - f).abs().max() / f.abs().amax().clamp_min(1.0)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(PIECEWISE))
def test_captum_piecewise_models_exact(name: str, dtype: torch.dtype) -> None:
    ctor, shape = PIECEWISE[name]
    for seed in range(3):
        _check(_randomise(ctor()).to(dtype), shape, dtype, seed)


@pytest.mark.parametrize("name", sorted(SOFTMAX))
def test_captum_softmax_models_refused_then_exact_on_logits(name: str) -> None:
    ctor, shape = SOFTMAX[name]
    model = _randomise(ctor()).double()
    x = torch.randn(4, *shape, dtype=torch.float64)
    with pytest.raises(NotPiecewiseAffineError, match=r"softmax.*module 'softmax'"):
        affine_map(model, x)
    model.softmax = nn.Identity()
    _check(model, shape, torch.float64, 0)
