"""ops/_saved_grad.scale_saved: hands the saved gradient over when the loss's gradient is exactly 1."""
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from lowlight_fast.ops._saved_grad import scale_saved


def test_one_hands_the_saved_tensor_over():
    saved = torch.rand(2, 3)
    assert scale_saved(torch.tensor(1.0), saved) is saved


def test_other_values_and_dtypes_scale():
    saved = torch.rand(2, 3)
    got = scale_saved(torch.tensor(0.5), saved)
    assert got is not saved
    torch.testing.assert_close(got, 0.5 * saved)
    got = scale_saved(torch.tensor(1.0, dtype=torch.float64), saved)  # another dtype: computed as usual
    assert got is not saved
    torch.testing.assert_close(got, saved)


def test_fake_tensors_are_never_read():
    with FakeTensorMode():
        grad, saved = torch.ones(()), torch.empty(4, 5)
        out = scale_saved(grad, saved)  # reading a fake value would raise
    assert out.shape == (4, 5) and out is not saved
