"""The losses' handling of unknown labels (targets of -1) costs no host sync: nothing in them reads a tensor's value
on the host (`bool(tensor)`, `.item()`, `.tolist()`), which on a GPU would stall every training step until the device
has caught up. Checked on the CPU with `torch._dynamo.explain`, which breaks the traced graph at every such read:
each loss, with both `unknown` options, traces as one graph with no break on targets holding -1 (the code path is
the same for any targets). The check
itself is shown to catch a sync: the same loss behind a `bool((y < 0).any())` test has a graph break. (Here rather than
in the loss notebook because importing and running dynamo takes a few seconds.)"""
import pytest
import torch

from sgre.loss import AsymmetricLoss, BCELoss, SGRELoss
from sgre.model import SGREOutput

LOSSES = {'asl': lambda u: AsymmetricLoss(unknown=u), 'asl-no-focus': lambda u: AsymmetricLoss(0., 0., unknown=u),
          'asl-clip': lambda u: AsymmetricLoss(4., 1., 0.05, unknown=u), 'bce': lambda u: BCELoss(u)}


def _targets(partial: bool):
    y = (torch.rand(4, 6) < 0.3).float()
    if partial: y[:, ::2] = -1
    return y


@pytest.mark.parametrize('unknown', ['ignore', 'negative'])
@pytest.mark.parametrize('name', list(LOSSES))
def test_no_graph_break(name, unknown):
    torch._dynamo.reset()
    loss = LOSSES[name](unknown)
    z = torch.randn(4, 6, requires_grad=True)
    ex = torch._dynamo.explain(loss)(z, _targets(True))
    assert (ex.graph_count, ex.graph_break_count) == (1, 0), ex.break_reasons


def test_sgre_loss_no_graph_break():
    torch._dynamo.reset()
    out = SGREOutput(torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True), torch.rand(4, 6, 2, 2))
    ex = torch._dynamo.explain(SGRELoss(lamda=0.4))(out, _targets(True))
    assert ex.graph_break_count == 0, ex.break_reasons


def test_the_check_sees_a_sync():
    torch._dynamo.reset()
    loss = AsymmetricLoss()
    def skipping(z, y):                                        # what the losses avoid: deciding on the host
        return loss(z, y) if bool((y < 0).any()) else loss(z, y.clamp(min=0))
    ex = torch._dynamo.explain(skipping)(torch.randn(4, 6), _targets(True))
    assert ex.graph_break_count >= 1
