import pytest
import torch

from spiking_lm.nn import SURROGATES, build_surrogate
from spiking_lm.nn.surrogate import heaviside


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_forward_is_heaviside_with_one_at_zero(name):
    x = torch.tensor([-2.0, -1e-6, 0.0, 1e-6, 3.0])
    assert torch.equal(build_surrogate(name)(x), torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]))


@pytest.mark.parametrize("name,kwargs", [("atan", {}), ("atan", {"alpha": 5.0}), ("sigmoid", {}), ("rectangle", {})])
def test_backward_equals_derivative_of_primitive(name, kwargs):
    surrogate = build_surrogate(name, **kwargs)
    # Avoid the rectangle's two kinks, where the finite difference of the primitive is undefined.
    x = torch.linspace(-1.7, 1.7, 201, dtype=torch.float64)
    x = x[(x.abs() - 0.5).abs() > 1e-3].requires_grad_()
    surrogate(x).backward(torch.ones_like(x))
    step = 1e-6
    numeric = (surrogate.primitive(x.detach() + step) - surrogate.primitive(x.detach() - step)) / (2 * step)
    torch.testing.assert_close(x.grad, numeric, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(x.grad, surrogate.derivative(x.detach()))


def test_default_parameters_follow_the_spec():
    assert build_surrogate("atan").param == 2.0
    assert build_surrogate("sigmoid").param == 4.0
    assert build_surrogate("rectangle").param == 1.0
    # atan peak is alpha / 2 at x = 0
    assert build_surrogate("atan").derivative(torch.zeros(1)).item() == pytest.approx(1.0)


def test_unknown_surrogate_lists_valid_names():
    with pytest.raises(ValueError, match="unknown surrogate 'tanh'.*atan, rectangle, sigmoid"):
        build_surrogate("tanh")


def test_bad_surrogate_arguments_are_named():
    with pytest.raises(ValueError, match="alpha must be a positive number"):
        build_surrogate("atan", alpha=-1.0)
    with pytest.raises(ValueError, match="unknown argument.*'beta'.*accepts 'width'"):
        build_surrogate("rectangle", beta=2.0)


def test_built_surrogate_passes_through():
    surrogate = build_surrogate("sigmoid", alpha=3.0)
    assert build_surrogate(surrogate) is surrogate
    assert torch.equal(heaviside(torch.tensor([-1.0, 0.0])), torch.tensor([0.0, 1.0]))
