"""Batch augmentation: identity, flips, offsets that move the image the way they say, noise."""
import torch

from ch10_luna.augment import BOOK_AUGMENTATION, AugmentSpec, apply_affine, augment_batch


def blob_batch(n=2, shape=(8, 12, 16), at=(4, 6, 8)):
    x = torch.zeros(n, 1, *shape)
    x[:, :, at[0], at[1], at[2]] = 1000.0
    return x


def identity(n, d):
    return torch.cat([torch.eye(d).repeat(n, 1, 1), torch.zeros(n, d, 1)], dim=2)


def test_no_augmentation_returns_the_batch_untouched():
    x = torch.randn(2, 1, 8, 12, 16)
    assert augment_batch(x, AugmentSpec()) is x


def test_identity_transform_reproduces_the_input():
    x = torch.randn(3, 1, 8, 12, 16)
    torch.testing.assert_close(apply_affine(x, identity(3, 3)), x, atol=1e-5, rtol=0)


def test_flipping_x_reverses_the_columns():
    x = torch.randn(1, 1, 8, 12, 16)
    theta = identity(1, 3)
    theta[0, 0, 0] = -1.0                              # grid x is the column axis
    torch.testing.assert_close(apply_affine(x, theta), x.flip(-1), atol=1e-5, rtol=0)


def test_a_pure_offset_moves_the_image_by_minus_offset():
    x = blob_batch(1)
    for axis, (dim, width) in enumerate([(4, 16), (3, 12), (2, 8)]):   # grid x, y, z
        theta = identity(1, 3)
        theta[0, axis, 3] = 2 * 2 / width              # two voxels, in normalized units
        out = apply_affine(x, theta)
        moved = torch.nonzero(out[0, 0] > 500).tolist()
        expected = [4, 6, 8]
        expected[dim - 2] -= 2
        assert moved == [expected], (axis, moved)


def test_the_offset_is_in_the_last_column_not_a_row():
    x = blob_batch(1)
    theta = identity(1, 3)
    theta[0, 0, 3] = 0.25
    assert not torch.equal(apply_affine(x, theta), apply_affine(x, identity(1, 3)))


def test_2d_batches_and_labels_move_together():
    x = torch.zeros(1, 7, 16, 16)
    x[0, :, 5, 9] = 500.0
    label = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    label[0, 0, 5, 9] = True
    spec = AugmentSpec(offset=0.3, flip=True)
    x_aug, label_aug = augment_batch(x, spec, torch.Generator().manual_seed(0), label=label)
    assert label_aug.dtype == torch.bool
    peak = torch.nonzero(x_aug[0, 3] == x_aug[0, 3].max()).tolist()
    assert torch.nonzero(label_aug[0, 0]).tolist() == peak


def test_noise_has_the_books_std_and_shapes_are_kept():
    x = torch.zeros(4, 1, 16, 24, 24)
    out = augment_batch(x, AugmentSpec(noise=25.0), torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    assert abs(float(out.std()) - 25.0) < 0.5


def test_full_augmentation_is_reproducible_from_the_generator():
    x = torch.randn(2, 1, 8, 12, 16) * 100
    a = augment_batch(x, BOOK_AUGMENTATION, torch.Generator().manual_seed(5))
    b = augment_batch(x, BOOK_AUGMENTATION, torch.Generator().manual_seed(5))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)
