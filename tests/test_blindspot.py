"""The blind-spot geometry of AT-BSN, checked by exact input gradients."""

from __future__ import annotations

import pytest
import torch

from napari_atbsn.errors import BlindSpotError
from napari_atbsn.models import ATBSN, Student


def _grad(model: ATBSN, shape: tuple[int, int], pos: tuple[int, int], k: int) -> torch.Tensor:
    x = torch.randn(1, model.in_channels, *shape, dtype=torch.float64, requires_grad=True)
    model(x, k)[0, 0, pos[0], pos[1]].backward()
    return x.grad[0].abs().sum(0)


@pytest.fixture(scope="module", params=["tiny", "small"])
def model(request) -> ATBSN:
    torch.manual_seed(1)
    return ATBSN(1, request.param).double()


@pytest.mark.parametrize("k", [1, 3, 5, 9])
@pytest.mark.parametrize("pos", [(24, 29), (31, 32), (40, 21)])
def test_square_is_blind_and_neighbours_at_shift_are_seen(model: ATBSN, k: int, pos: tuple[int, int]) -> None:
    g = _grad(model, (64, 70), pos, k)
    h, s = k // 2, (k + 1) // 2
    y, x = pos
    assert torch.count_nonzero(g[y - h:y + h + 1, x - h:x + h + 1]) == 0, "the k x k square must be blind"
    for dy, dx in ((-s, 0), (s, 0), (0, -s), (0, s)):
        assert g[y + dy, x + dx] > 0, f"pixel at offset {(dy, dx)} (distance s={s}) must be seen"
    assert torch.count_nonzero(g) > 3 * k * k, "the receptive field reaches far beyond the blind spot"


@pytest.mark.parametrize("k", [1, 3, 9])
@pytest.mark.parametrize("pos", [(0, 0), (2, 68), (63, 1), (61, 66)])
def test_no_leak_at_borders_of_odd_non_square_images(model: ATBSN, k: int, pos: tuple[int, int]) -> None:
    shape = (64, 70) if model.arch.depth == 3 else (45, 71)
    pos = (min(pos[0], shape[0] - 1), min(pos[1], shape[1] - 1))
    g = _grad(model, shape, pos, k)
    h = k // 2
    y, x = pos
    blind = g[max(0, y - h):y + h + 1, max(0, x - h):x + h + 1]
    assert torch.count_nonzero(blind) == 0


def test_k0_sees_the_centre_pixel(model: ATBSN) -> None:
    g = _grad(model, (48, 48), (20, 20), 0)
    assert g[20, 20] > 0


@pytest.mark.parametrize("k, word", [(2, "even"), (4, "even"), (-1, "negative"), (-3, "negative"), (1.5, "integer")])
def test_bad_k_is_refused(k, word: str) -> None:
    m = ATBSN(1, "tiny")
    with pytest.raises(BlindSpotError, match=word):
        m(torch.zeros(1, 1, 32, 32), k)


def test_k_too_large_for_input_is_refused() -> None:
    with pytest.raises(BlindSpotError, match="pixels across"):
        ATBSN(1, "tiny")(torch.zeros(1, 1, 8, 8), 15)


@pytest.mark.parametrize("shape", [(1, 1, 37, 53), (2, 3, 33, 32), (1, 3, 17, 95), (1, 1, 64, 64)])
def test_teachers_equal_repeated_forward(shape) -> None:
    m = ATBSN(shape[1], "tiny").double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    ks = [0, 1, 3, 5, 7, 9, 11]
    stacked = m.teachers(x, ks)
    assert stacked.shape == (len(ks), *shape)
    for i, k in enumerate(ks):
        torch.testing.assert_close(stacked[i], m(x, k), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 1, 37, 53), (2, 3, 33, 32), (1, 1, 17, 95), (1, 2, 5, 7)])
@pytest.mark.parametrize("name", ["tiny", "small", "A", "B", "C", "S-tiny"])
def test_output_shape_equals_input_shape(shape, name: str) -> None:
    c = shape[1]
    if name in ("tiny", "small"):
        y = ATBSN(c, name)(torch.randn(*shape), 1)
    else:
        y = Student(name.replace("S-", ""), c)(torch.randn(*shape))
    assert y.shape == shape


@pytest.mark.parametrize("build, expected", [
    (lambda: ATBSN(3, "paper"), 1_268_547),
    (lambda: ATBSN(1, "paper"), 1_265_761),
    (lambda: Student("A", 3), 128_385),
    (lambda: Student("B", 3), 856_656),
    (lambda: Student("C", 3), 1_003_011),
    (lambda: Student("C", 1), 998_689),
])
def test_parameter_counts_match_method_md(build, expected: int) -> None:
    assert sum(p.numel() for p in build().parameters()) == expected


def test_student_c_initialises_from_paper_teacher() -> None:
    teacher, student = ATBSN(1, "paper"), Student("C", 1)
    copied = student.init_from_teacher(teacher)
    t, s = teacher.state_dict(), student.state_dict()
    assert copied == len([k for k in t if k.startswith("unet.") and not k.startswith("unet.dec1.")])
    assert torch.equal(s["unet.enc3.conv1.conv.weight"], t["unet.enc3.conv1.conv.weight"])
    assert not torch.equal(s["unet.dec1.conv1.conv.weight"][:, :96], t["unet.dec1.conv1.conv.weight"][:, :96])


def test_student_a_refuses_teacher_init() -> None:
    with pytest.raises(Exception, match="only student C"):
        Student("A", 1).init_from_teacher(ATBSN(1, "tiny"))
