"""The segment walk at scale (issue 10, sec. 4): budgets return flagged partial prefixes of the full walk, the
batched walk (several fronts per forward pass) finds what the sequential walk and dense sampling find, a batch of one
is accepted as one input, and the progress bar is harmless; the paired pass (record and replay in one batch) equals a
recording pass and a replay, and the adaptive batch walks the same regions."""

from __future__ import annotations

import functools
import io
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from torch import nn

from cnnlens.spline import ReplayDivergenceError, SegmentRegions, partition_codes, regions_on_segment
from cnnlens.spline._capture import Entry, UnpairableError, capture, run_captured
from cnnlens.spline._segment import _halves, _Reader, _step
from cnnlens.spline._windows import pool_windows
from test_spline_properties_nets import ACTIVATIONS, BLOCKS, input_for, random_net


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP contention on the shared CI machine (conftest restores it)."""
    torch.set_num_threads(1)


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(72, 5)).double().eval()


@pytest.fixture(scope="module")
def walk_case() -> tuple[nn.Module, torch.Tensor, SegmentRegions]:
    """A conv net, two random inputs and the full sequential walk between them (several dozen regions)."""
    net = _conv_net()
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    full = regions_on_segment(net, x[0], x[1], batch_size=1, progress=False)
    assert not full.partial and full.t_reached == 1.0 and full.num_regions > 30
    return net, x, full


def _assert_prefix(part: SegmentRegions, full: SegmentRegions) -> None:
    """``part`` is the start of ``full``: the same breakpoints below t_reached and a breakpoint of ``full`` at it."""
    k = part.num_regions - 1
    assert part.partial and len(part.breakpoints) == k == len(part.layers)
    assert torch.allclose(part.breakpoints, full.breakpoints[:k], rtol=0, atol=1e-10)
    assert part.layers == full.layers[:k]
    assert abs(part.t_reached - float(full.breakpoints[k])) <= 1e-10


@pytest.mark.parametrize("batch_size", [1, 8])
def test_max_regions_returns_the_flagged_prefix_of_the_full_walk(walk_case, batch_size):
    net, x, full = walk_case
    for k in (1, 2, 7, full.num_regions - 1):
        with pytest.warns(UserWarning, match=f"stopped at max_regions={k}.*partial"):
            part = regions_on_segment(net, x[0], x[1], max_regions=k, batch_size=batch_size, progress=False)
        assert part.num_regions == k
        _assert_prefix(part, full)
    exact = regions_on_segment(net, x[0], x[1], max_regions=full.num_regions, batch_size=batch_size, progress=False)
    assert not exact.partial and exact.num_regions == full.num_regions and exact.t_reached == 1.0


@pytest.mark.parametrize("batch_size", [1, 8])
def test_time_budget_returns_the_flagged_prefix_of_the_full_walk(walk_case, batch_size):
    """A budget that is over after the first round: the walk stops there, with the regions it has walked from 0."""
    net, x, full = walk_case
    with pytest.warns(UserWarning, match="stopped at max_seconds"):
        part = regions_on_segment(net, x[0], x[1], max_seconds=1e-9, batch_size=batch_size, progress=False)
    assert 1 <= part.num_regions < full.num_regions
    _assert_prefix(part, full)


def test_batched_walk_equals_the_sequential_walk(walk_case):
    net, x, full = walk_case
    for batch_size in (2, 5, 32, 200):
        walk = regions_on_segment(net, x[0], x[1], batch_size=batch_size, progress=False)
        assert not walk.partial and walk.layers == full.layers
        assert torch.allclose(walk.breakpoints, full.breakpoints, rtol=0, atol=1e-10), batch_size


architectures = st.tuples(
    st.lists(st.tuples(st.sampled_from(BLOCKS), st.sampled_from(ACTIVATIONS)), min_size=1, max_size=5),
    st.sampled_from([1, 2]),
    st.integers(0, 10_000),
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=architectures, batch_size=st.sampled_from([3, 16]))
def test_batched_walk_matches_sequential_walk_and_dense_sampling(arch, batch_size):
    """Over random architectures (every supported part): the batched walk finds the sequential walk's breakpoints,
    and the codes of dense samples change between two samples exactly when a breakpoint lies between them."""
    blocks, dims, seed = arch
    net = random_net(blocks, dims, seed, torch.float64)
    x = input_for(net, 2, seed, torch.float64)
    walk = regions_on_segment(net, x[0], x[1], batch_size=batch_size, progress=False)
    sequential = regions_on_segment(net, x[0], x[1], batch_size=1, progress=False)
    assert not walk.partial and walk.num_regions == sequential.num_regions
    assert torch.allclose(walk.breakpoints, sequential.breakpoints, rtol=0, atol=1e-9)
    for i in (i for i, pair in enumerate(zip(walk.layers, sequential.layers, strict=True)) if pair[0] != pair[1]):
        # boundaries of two layers that coincide (a ReLU after a leaky ReLU flips with it): which one rounding puts
        # first may differ between the walks; both layers' codes must change there
        t = float(walk.breakpoints[i])
        step = torch.tensor([-1e-8, 1e-8], dtype=torch.float64).view(-1, *[1] * (x.dim() - 1))
        near = partition_codes(net, x[0][None] + (t + step) * (x[1] - x[0])[None])
        for layer in (walk.layers[i], sequential.layers[i]):
            assert not torch.equal(near[layer].data[0], near[layer].data[1]), (t, layer)
    grid = torch.linspace(0, 1, 1201, dtype=torch.float64)
    pts = x[0][None] + grid.view(-1, *[1] * (x.dim() - 1)) * (x[1] - x[0])[None]
    codes = partition_codes(net, pts)
    flat = torch.cat([codes[k].states().reshape(len(grid), -1) for k in codes], dim=1)
    changed = (flat[1:] != flat[:-1]).any(dim=1)
    counts = torch.bincount(torch.bucketize(walk.breakpoints, grid) - 1, minlength=len(grid) - 1)
    assert torch.all(counts[changed] > 0), "a code change between samples with no breakpoint in between"
    assert torch.all(changed[counts == 1]), "a single breakpoint between samples with equal codes"


def test_progress_is_silent_when_stderr_is_not_a_terminal(walk_case, capsys):
    net, x, full = walk_case
    walk = regions_on_segment(net, x[0], x[1], progress=True)
    assert capsys.readouterr().err == ""
    assert walk.layers == full.layers and torch.allclose(walk.breakpoints, full.breakpoints, rtol=0, atol=1e-10)


def test_progress_bar_on_a_terminal_shows_the_walk(walk_case, monkeypatch):
    from cnnlens import _progress

    screen = io.StringIO()
    monkeypatch.setattr(_progress, "_CONSOLE", Console(file=screen, force_terminal=True, width=120))
    net, x, full = walk_case
    walk = regions_on_segment(net, x[0], x[1], progress=True)
    assert "region walk" in screen.getvalue()
    assert walk.layers == full.layers and torch.allclose(walk.breakpoints, full.breakpoints, rtol=0, atol=1e-10)


def test_batch_of_one_is_one_input(walk_case):
    """x[:1] (shape (1, 1, 12, 12)) is read as a batch of one, x[0] (shape (1, 12, 12)) as one sample: same walk."""
    net, x, full = walk_case
    walk = regions_on_segment(net, x[:1], x[1:], batch_size=1, progress=False)
    assert walk.num_regions == full.num_regions and walk.layers == full.layers
    assert torch.allclose(walk.breakpoints, full.breakpoints, rtol=0, atol=1e-12)
    mlp = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).double().eval()  # runs on both readings
    z = torch.randn(2, 6, dtype=torch.float64)
    one = regions_on_segment(mlp, z[0], z[1], progress=False)
    batched = regions_on_segment(mlp, z[:1], z[1:], progress=False)
    assert one.layers == batched.layers and torch.allclose(one.breakpoints, batched.breakpoints, rtol=0, atol=1e-12)


def test_inputs_the_model_cannot_take_name_both_readings():
    net = _conv_net()
    with pytest.raises(ValueError, match=r"nor as a batch of one \(shape \(1, 1, 5, 5\)\)"):
        regions_on_segment(net, torch.rand(1, 1, 5, 5), torch.rand(1, 1, 5, 5), progress=False)
    with pytest.raises(ValueError, match=r"as one sample \(a batch of shape \(1, 3, 5, 5\)\).*x\[:1\]"):
        regions_on_segment(net, torch.rand(3, 5, 5), torch.rand(3, 5, 5), progress=False)


def test_invalid_budgets_are_refused(walk_case):
    net, x, _ = walk_case
    for kwargs, what in (({"max_regions": 0}, "max_regions"), ({"max_seconds": 0}, "max_seconds"),
                         ({"batch_size": 0}, "batch_size")):
        with pytest.raises(ValueError, match=what):
            regions_on_segment(net, x[0], x[1], progress=False, **kwargs)


def test_value_dependent_control_flow_is_refused_by_name():
    """The slopes are read by replaying each point's regions further along the path; a model whose branch depends
    on the input values cannot be replayed, and the walk says so instead of reading wrong slopes."""

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.lin(x))
            return F.relu(h) if float(x.sum()) > 2 else h

    with pytest.raises(ReplayDivergenceError, match="regions_on_segment reads the slopes"):
        regions_on_segment(Branchy().eval(), torch.zeros(4, dtype=torch.float64),
                           torch.ones(4, dtype=torch.float64), progress=False)


def test_a_model_in_training_mode_is_refused_before_any_forward_pass():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)).double()
    before = net[1].running_mean.clone()
    with pytest.raises(ValueError, match="training mode"):
        regions_on_segment(net, torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), progress=False)
    assert torch.equal(net[1].running_mean, before)  # no forward pass updated the statistics


# --- the fast step rules against the rules by pieces -----------------------------------------------------------
#: values where the sign tests of the step rules are decided: exact zeros of both signs, the smallest subnormal (its
#: quotients underflow to zero), huge values (their quotients overflow) and ordinary numbers (finite: a network's
#: values on finite inputs are)
_EDGES = (0.0, -0.0, 5e-324, -5e-324, 1e300, -1e300, 1.0, -1.0, 0.5, -2.0, 3.0)


def _by_pieces_binary(u: torch.Tensor, ahead: torch.Tensor) -> torch.Tensor:
    """The step of binary units written out from their pieces: a unit crosses zero when its active piece (u > 0)
    and its slope have opposite signs (the rule the walk had before it was fused)."""
    du = ahead - u
    moving = torch.where(u > 0, du < 0, du > 0)
    s = torch.where(moving, -u / torch.where(du == 0, torch.ones_like(du), du), math.inf)
    return s.clamp_min(0).flatten(1).amin(1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_EDGES) | st.floats(-4, 4), st.sampled_from(_EDGES) | st.floats(-4, 4)),
                min_size=3, max_size=24))
def test_binary_step_equals_the_rule_by_pieces(pairs):
    """Bit for bit (a zero step of either sign counts as 0) on units at and near every sign edge, 3 per sample."""
    n = len(pairs) // 3
    u = torch.tensor([p[0] for p in pairs[:3 * n]], dtype=torch.float64).view(n, 3)
    ahead = torch.tensor([p[1] for p in pairs[:3 * n]], dtype=torch.float64).view(n, 3)
    here = Entry("relu", "binary", (3,), 2, u > 0, u > 0, {"u": u})
    got = _step(here, Entry("relu", "binary", (3,), 2, u > 0, u > 0, {"u": ahead}))
    assert torch.equal(got, _by_pieces_binary(u, ahead)), (u, ahead)


def _by_windows_argmax(h: torch.Tensor, ahead: torch.Tensor, states: torch.Tensor, windows) -> torch.Tensor:
    """The argmax step read off explicit windows: elements of a window that rise faster than its maximum."""
    v, dv = windows(h, fill=-math.inf), windows(ahead - h, fill=0.0)
    sel = states.long().unsqueeze(-1)
    gain = dv - dv.gather(-1, sel)
    s = torch.where(gain > 0, (v.gather(-1, sel) - v) / torch.where(gain > 0, gain, torch.ones_like(gain)), math.inf)
    return s.clamp_min(0).flatten(1).amin(1)


@pytest.mark.parametrize(("pool", "size"), [(nn.MaxPool2d(2), (6, 6)), (nn.MaxPool2d(2), (7, 5)),
                                            (nn.MaxPool2d(3, 2, 1), (7, 7)), (nn.MaxPool2d(2, ceil_mode=True), (5, 5)),
                                            (nn.MaxPool1d(3), (10,)), (nn.MaxPool3d(2), (4, 4, 5))])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), ties=st.booleans())
def test_max_pool_step_equals_the_rule_on_explicit_windows(pool, size, seed, ties):
    """Windows that tile the input (compared as broadcast views), overlapping ones, a partial window and cropped
    borders: the same steps as comparing every element of every explicit window with its maximum, also with ties
    (values and slopes drawn from a few integers)."""
    g = torch.Generator().manual_seed(seed)
    shape = (4, 2, *size)
    if ties:
        h = torch.randint(-2, 3, shape, generator=g).double()
        slope = torch.randint(-2, 3, shape, generator=g).double()
    else:
        h, slope = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g,
                                                                                       dtype=torch.float64)
    with torch.no_grad(), capture(pool, probe=True) as here:
        run_captured(here, pool, h)
    with torch.no_grad(), capture(pool, probe=True, forced=here.entries) as ahead:
        run_captured(ahead, pool, h + slope)
    e, f = here.entries[0], ahead.entries[0]
    assert isinstance(e.probe["windows"].func, type(pool_windows)) and e.probe["windows"].func is pool_windows
    expected = _by_windows_argmax(e.probe["h"], f.probe["h"], e.states, e.probe["windows"])
    assert torch.equal(_step(e, f), expected)


# --- the paired pass: record and replay in one batch [x; x'] ----------------------------------------------------


class _Selections(nn.Module):
    """Every selection and elementwise-piecewise unit the walk reads: adaptive max-pool, amax, max over a dim,
    cummax, sort, top-k, median, Hardsigmoid, Hardshrink, Softshrink, a two-sided clamp and a minimum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.out = nn.Linear(3 * (9 + 1 + 1 + 1 + 4 + 3 + 1) + 5 * 3 * 64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        flat = h.flatten(2)
        parts = [F.adaptive_max_pool2d(h, 3), h.amax(dim=(2, 3)), flat.max(dim=2).values,
                 torch.cummax(flat, dim=2).values[..., -1], torch.sort(flat, dim=2).values[..., ::16],
                 torch.topk(flat, 3, dim=2).values, flat.median(dim=2).values, F.hardsigmoid(4 * h),
                 F.hardshrink(h, 0.3), F.softshrink(h, 0.2), h.clamp(-0.4, 0.5), torch.minimum(h, 0.2 * h)]
        return self.out(torch.cat([p.flatten(1) for p in parts], 1))


def _ties_net() -> nn.Module:
    """Max-pooling on integer-valued inputs (ties in most windows), then integer weights."""
    torch.manual_seed(3)
    lin = nn.Linear(2 * 4 * 4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.randint(-2, 3, lin.weight.shape))
    return nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), lin, nn.ReLU(), nn.Linear(3, 2))


def _paired_case(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A model, points x and points x' further along a direction (float64, 5 samples each)."""
    from cnnlens.nn.models import lenet5, small_resnet

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(7)
    if name == "lenet5":
        net, shape = lenet5(num_classes=10), (1, 32, 32)
    elif name == "small_resnet":
        net, shape = small_resnet(num_classes=10, width=4), (1, 16, 16)
    elif name == "ties":
        net, shape = _ties_net(), (2, 8, 8)
        x = torch.randint(-2, 3, (5, *shape), generator=g).double()
        return net.double().eval(), x, x + torch.randint(-1, 2, (1, *shape), generator=g).double()
    elif name == "clamps":
        net, shape = nn.Sequential(nn.Linear(6, 12), nn.Hardtanh(-0.5, 0.7), nn.Linear(12, 12), nn.ReLU6(),
                                   nn.Linear(12, 3)), (6,)
    elif name == "leaky":
        net, shape = nn.Sequential(nn.Conv1d(2, 4, 3), nn.LeakyReLU(0.2), nn.Conv1d(4, 4, 3), nn.PReLU(4),
                                   nn.Flatten(), nn.Linear(4 * 6, 5), nn.RReLU(), nn.Linear(5, 2)), (2, 10)
    else:
        net, shape = _Selections(), (1, 8, 8)
    x = torch.randn(5, *shape, generator=g, dtype=torch.float64)
    return net.double().eval(), x, x + 0.7 * torch.randn(1, *shape, generator=g, dtype=torch.float64)


def _two_passes(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[list[Entry], list[Entry], torch.Tensor]:
    with torch.no_grad(), capture(net, probe=True) as here:
        run_captured(here, net, x)
    with torch.no_grad(), capture(net, probe=True, forced=here.entries) as ahead:
        out = run_captured(ahead, net, y)
    return here.entries, ahead.entries, out


PAIRED_CASES = ("lenet5", "small_resnet", "ties", "clamps", "leaky", "selections")


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("name", PAIRED_CASES)
def test_paired_pass_equals_a_recording_and_a_replay(name, split, monkeypatch):
    """One pass on [x; x'] in which every unit takes x's pieces on both halves gives what recording at x and
    replaying at x' give: the same layers, pieces, values, output and boundary steps; also with every convolution
    run per half (``split``, as for large batches)."""
    from cnnlens.spline import _capture

    if split:
        monkeypatch.setattr(_capture, "_SPLIT_UNFOLD", 0)
    net, x, y = _paired_case(name)
    here, ahead, out = _two_passes(net, x, y)
    with torch.no_grad(), capture(net, probe=True, paired=True) as both:
        out2 = run_captured(both, net, torch.cat([x, y]))
    assert [(e.name, e.kind, e.shape) for e in both.entries] == [(e.name, e.kind, e.shape) for e in here]
    assert len(here) >= 2
    with torch.no_grad():
        plain = net(x).flatten(1)
    assert torch.allclose(out2[:len(x)], plain, rtol=1e-12, atol=1e-12)  # the first half is the plain forward
    assert torch.allclose(out2[len(x):], out, rtol=1e-12, atol=1e-12)  # the second half is the replay
    for e, f, entry in zip(here, ahead, both.entries, strict=True):
        h2, f2 = _halves(entry, len(x))
        assert torch.equal(h2.states, e.states), e.name
        for key in ("u", "h"):
            if key in e.probe:
                assert torch.allclose(h2.probe[key], e.probe[key], rtol=1e-12, atol=1e-12), e.name
                assert torch.allclose(f2.probe[key], f.probe[key], rtol=1e-12, atol=1e-12), e.name
        with torch.no_grad():
            s, s2 = _step(e, f), _step(h2, f2)
        assert torch.allclose(s2, s, rtol=1e-10, atol=1e-12), (e.name, s, s2)


@pytest.mark.parametrize("conv", [nn.Conv1d(2, 3, 3, padding=1), nn.Conv2d(2, 3, 3, stride=2, padding=1),
                                  nn.Conv2d(4, 4, 3, groups=2, dilation=2), nn.Conv3d(2, 3, 2)])
@pytest.mark.parametrize("threads", [1, 2])
def test_paired_pass_convolves_in_chunks_as_two_passes(conv, threads, monkeypatch):
    """Convolutions of a paired pass split into chunks of samples within each half (down to one sample: budget 0,
    or several: a budget of a few samples' unfolding) give the numbers of a recording pass and a replay, on 1 and 2
    threads, and of the pass on the whole batch, up to rounding: float64 convolutions are not bit for bit the same
    for every batch size on every CPU (on AVX-512 ones they differ in the last bits, up to 4.4e-16 here), while a
    chunk out of place or out of order would differ by the size of the values (about 1)."""
    from cnnlens.spline import _capture

    d = conv.weight.dim() - 2
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten()).double().eval()
    g = torch.Generator().manual_seed(11)
    x = torch.randn(7, conv.in_channels, *[6] * d, generator=g, dtype=torch.float64)
    y = x + 0.3 * torch.randn(1, *x.shape[1:], generator=g, dtype=torch.float64)
    one = x.shape[1] * math.prod(conv.kernel_size) * 8 * math.prod(-(-6 // s) for s in conv.stride)  # per sample
    runs = []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for budget in (2**60, 3 * one, 0):
            monkeypatch.setattr(_capture, "_SPLIT_UNFOLD", budget)
            with torch.no_grad(), capture(net, probe=True, paired=True) as both:
                runs.append((run_captured(both, net, torch.cat([x, y])), both.entries[0].probe["u"]))
        here, ahead, out = _two_passes(net, x, y)
    finally:
        torch.set_num_threads(previous)
    close = functools.partial(torch.testing.assert_close, rtol=0, atol=1e-14)
    for got, u in runs:
        close(got, runs[0][0])
        close(u, runs[0][1])
        close(u[:len(x)], here[0].probe["u"])
        close(u[len(x):], ahead[0].probe["u"])
        close(got[len(x):], out)


@pytest.mark.parametrize("name", PAIRED_CASES)
def test_paired_walk_equals_the_two_pass_walk(name, monkeypatch):
    net, x, y = _paired_case(name)
    a, b = x[0], y[0] if name != "ties" else x[1]
    b = a + {"lenet5": 0.05, "small_resnet": 0.1, "selections": 0.05}.get(name, 1.0) * (b - a)  # tens of regions
    paired = regions_on_segment(net, a, b, batch_size=4, progress=False)
    monkeypatch.setattr(_Reader, "paired", False)
    two = regions_on_segment(net, a, b, batch_size=4, progress=False)
    assert paired.num_regions == two.num_regions > 1 and paired.layers == two.layers
    assert torch.allclose(paired.breakpoints, two.breakpoints, rtol=0, atol=1e-10)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=architectures, dtype=st.sampled_from([torch.float64, torch.float32]))
def test_paired_walk_equals_the_two_pass_walk_on_random_architectures(arch, dtype):
    """Every supported part, models built in float64 and float32 (the walk runs in float64)."""
    blocks, dims, seed = arch
    net = random_net(blocks, dims, seed, dtype)
    x = input_for(net, 2, seed, dtype)
    reader = _Reader(net.double(), x[:1].double(), (x[1:] - x[:1]).double())
    here, ahead = reader.passes(reader.points([0.2, 0.5, 0.9]))
    assert reader.paired, "a per-sample model without control flow must be read in one paired pass"
    paired = reader.steps(here, ahead)
    reader.paired = False
    two = reader.steps(*reader.passes(reader.points([0.2, 0.5, 0.9])))
    assert torch.allclose(paired, two, rtol=1e-10, atol=1e-12)


class _Gated(nn.Module):
    """Control flow on a value read off the input (``bool``; true on the inputs used here), optionally behind a
    broad ``except``."""

    def __init__(self, swallow: bool) -> None:
        super().__init__()
        self.lin, self.out, self.swallow = nn.Linear(4, 8), nn.Linear(8, 2), swallow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.lin(x))
        try:
            wide = bool((h.abs() < 1e6).all())
        except Exception:  # noqa: BLE001 - a model that swallows every error, on purpose
            if not self.swallow:
                raise
            wide = True
        return self.out(F.relu(h) if wide else h)


@pytest.mark.parametrize("swallow", [False, True])
def test_control_flow_on_values_falls_back_to_two_passes(swallow):
    """The paired pass cannot take a decision of the first half on the second half; the reader notices (also when
    the model catches the error) and reads with two passes, with the same steps."""
    net = _Gated(swallow).double().eval()
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reader = _Reader(net, x[:1], x[1:] - x[:1])
    steps = reader.steps(*reader.passes(reader.points([0.1, 0.6])))
    assert not reader.paired
    here, ahead, _ = _two_passes(net, reader.points([0.1, 0.6]),
                                 reader.points([0.1, 0.6]) + reader.scale * reader.direction)
    with torch.no_grad():
        expected = torch.stack([_step(e, f) for e, f in zip(here, ahead, strict=True)]) * reader.scale
    assert torch.equal(steps, expected)
    walk = regions_on_segment(net, x[0], x[1], progress=False)
    sequential = regions_on_segment(net, x[0], x[1], batch_size=1, progress=False)
    assert walk.num_regions == sequential.num_regions > 1 and walk.layers == sequential.layers


def test_a_replay_on_a_shorter_path_is_refused_by_name():
    """A branch on a value that flips between a point and its replay further along the path: the replay meets fewer
    nonlinearities than the record, and the walk says so instead of reading mismatched slopes."""

    class Shortcut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.lin(x)
            return F.relu(h) if bool((x[:, 0] < 0.2).all()) else h  # true at t = 0, false at its replay

    torch.manual_seed(0)
    net = Shortcut().double().eval()
    with pytest.raises(ReplayDivergenceError, match="regions_on_segment reads the slopes.*met 0 nonlinearities"):
        regions_on_segment(net, torch.zeros(2, dtype=torch.float64), torch.tensor([0.4, 1.0], dtype=torch.float64),
                           batch_size=1, progress=False)


class _Overwriting(nn.Module):
    """Overwrites the input of its ReLU and of its max-pool in place after them (legal, and rare)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.out = nn.Conv2d(1, 2, 3), nn.Linear(2 * 3 * 3 * 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        r = F.relu(h)
        p = F.max_pool2d(r, 2)
        both = torch.cat([p, h.add_(1.0)[:, :, ::2, ::2][:, :, :3, :3]], 1)  # moves the ReLU's zero crossings
        r.add_(torch.arange(r[0].numel(), dtype=r.dtype).view(r.shape[1:]))  # and the max-pool's argmax switches
        return self.out(both.flatten(1))


def test_probes_shared_by_reference_are_copied_when_the_model_overwrites_them():
    """The paired pass keeps the inputs of the nonlinearities by reference; a model that overwrites one in place
    later on is noticed (version counters) and read with copies, giving the steps of two passes."""
    net = _Overwriting().double().eval()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reader = _Reader(net, x[:1], x[1:] - x[:1])
    pts = reader.points([0.1, 0.4, 0.8])
    steps = reader.steps(*reader.passes(pts))
    assert reader.paired and not reader.shared
    here, ahead, _ = _two_passes(net, pts, pts + reader.scale * reader.direction)
    with torch.no_grad():
        expected = torch.stack([_step(e, f) for e, f in zip(here, ahead, strict=True)]) * reader.scale
    assert torch.allclose(steps, expected, rtol=1e-10, atol=0)
    clean = _Reader(_conv_net(), torch.zeros(1, 1, 12, 12, dtype=torch.float64),
                    torch.ones(1, 1, 12, 12, dtype=torch.float64))
    clean.passes(clean.points([0.5]))
    assert clean.shared  # nothing overwritten: no copies


def test_paired_pass_refuses_what_it_cannot_pair():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).double().eval()
    with pytest.raises(ValueError, match="two halves"):
        with capture(net, probe=True, paired=True) as cap:
            run_captured(cap, net, torch.zeros(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="no forced entries"):
        capture(net, paired=True, forced=[]).__enter__()

    class Flat(nn.Module):  # a ReLU on the flattened batch: dim 0 is not the sample dimension there
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(x.reshape(-1)).reshape(x.shape)

    with pytest.raises(UnpairableError, match="samples in dim 0"):
        with capture(Flat(), probe=True, paired=True) as cap:
            run_captured(cap, Flat(), torch.zeros(4, 3, dtype=torch.float64))


# --- the adaptive batch ------------------------------------------------------------------------------------------


def test_adaptive_batch_walk_equals_the_sequential_walk(walk_case):
    net, x, full = walk_case
    walk = regions_on_segment(net, x[0], x[1], batch_size=None, progress=False)
    assert not walk.partial and walk.layers == full.layers
    assert torch.allclose(walk.breakpoints, full.breakpoints, rtol=0, atol=1e-10)
    for k in (3, full.num_regions - 1):
        with pytest.warns(UserWarning, match=f"stopped at max_regions={k}"):
            part = regions_on_segment(net, x[0], x[1], max_regions=k, progress=False)
        _assert_prefix(part, full)


def test_adaptive_batch_doubles_while_the_cost_per_point_falls():
    """The first round sets the start: the largest power of two of points whose records fit the starting budget,
    at least the smallest start. Then costs per point 10, 6, 5.9 (not 5% less), ...: the batch doubles twice and
    settles at the best size; rounds with fewer points than the batch do not count; a fixed batch_size never
    changes; records over the memory budget stop the growth, and so does a segment too short for twice the fronts."""
    from cnnlens.spline import _segment as seg

    for per_point, start in ((seg._START_RECORDS / 24, 16), (seg._START_RECORDS / 3, seg._FIRST_BATCH),
                             (seg._START_RECORDS * 4, seg._FIRST_BATCH), (1.0, seg._MAX_BATCH)):
        batch = seg._BatchSize(None)
        batch.observe(1, 1.0, per_point)
        assert batch.size == start and not batch.settled, per_point
    batch = seg._BatchSize(None)
    batch.observe(1, 100.0, seg._START_RECORDS / 24)  # the first round (one point): sets the start, not timed
    first = batch.size
    batch.observe(first - 1, 100.0, 8.0)  # a partial round: ignored
    for cost, size in ((10.0, first), (6.0, 2 * first), (5.9, 4 * first)):
        assert batch.size == size and not batch.settled
        for _ in range(2):
            batch.observe(size, cost * size, 8.0)
    assert batch.settled and batch.size == 2 * first
    fixed = seg._BatchSize(7)
    fixed.observe(7, 1.0, 8.0)
    assert fixed.settled and fixed.size == 7
    big = seg._BatchSize(None)
    big.observe(1, 1.0, seg._START_RECORDS / 24)
    first = big.size
    for _ in range(2):
        big.observe(big.size, 1.0, seg._RECORD_BUDGET / (1.5 * first))  # twice the batch would exceed the budget
    assert big.settled and big.size == first
    short = seg._BatchSize(None)
    short.observe(1, 1.0, seg._START_RECORDS / 24)
    for _ in range(2):
        short.observe(short.size, 1.0, 8.0, room=1.5 * first)  # the rest of the segment holds fewer fronts
    assert short.settled and short.size == first
