import pytest

from rmrrd.errors import InputError
from rmrrd.core.pci import Bdf

pytestmark = pytest.mark.unit


def test_short_form_means_segment_zero() -> None:
    assert Bdf.parse("00:14.0") == Bdf.parse("0000:00:14.0") == Bdf(0, 0, 0x14, 0)


def test_output_is_always_full_form() -> None:
    assert str(Bdf.parse("3:0.1")) == "0000:03:00.1"
    assert str(Bdf.parse("ffff:ff:1f.7")) == "ffff:ff:1f.7"


@pytest.mark.parametrize("text", ["", "00:14", "00:14.8", "00:20.0", "0:0:0:0.0", "00:14.0\n", "g0:00.0"])
def test_rejects_malformed(text: str) -> None:
    with pytest.raises(InputError, match="PCI device"):
        Bdf.parse(text)
