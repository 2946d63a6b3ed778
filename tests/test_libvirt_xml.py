"""libvirt's domain XML read as libvirt's libxl driver converts it (``libxl_conf.c``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rmrrd.errors import InputError
from rmrrd.core.libvirt_xml import libxl_domain_from_xml, parse_domain_xml, pci_devices
from rmrrd.core.libxl_domain import DomainType
from rmrrd.core.pci import Bdf

GPU_XML = (Path(__file__).resolve().parent / "data" / "libvirt" / "hvm-gpu.xml").read_text()


def domain(xml: str):  # type: ignore[no-untyped-def]
    return libxl_domain_from_xml(parse_domain_xml(xml))


def test_the_gpu_guest() -> None:
    converted = domain(GPU_XML)
    assert (converted.type, converted.max_memory_mib, converted.memory_mib) == (DomainType.HVM, 4096, 4096)
    assert (converted.videoram_mib, converted.hap, converted.bios) == (8, True, "seabios")
    assert [spec.bdf for spec in converted.pci] == [Bdf(0, 0, 2, 0)]
    assert converted.setup_keys()["config"] == ""  # libvirt sets no rdm=


@pytest.mark.parametrize(("memory", "mib"), [("<memory unit='KiB'>1048577</memory>", 1025),
                                             ("<memory unit='GiB'>2</memory>", 2048),
                                             ("<memory unit='MB'>1000</memory>", 954),
                                             ("<memory>524288</memory>", 512)])
def test_memory_units_round_up_to_a_mib(memory: str, mib: int) -> None:
    xml = GPU_XML.replace("<memory unit='KiB'>4194304</memory>", memory).replace(
        "<currentMemory unit='KiB'>4194304</currentMemory>\n", "")
    converted = domain(xml)
    assert converted.max_memory_mib == converted.memory_mib == mib


def test_features_firmware_and_video() -> None:
    assert domain(GPU_XML.replace("<hap state='on'/>", "<hap state='off'/>")).hap is False
    assert domain(GPU_XML.replace("<hap state='on'/>", "")).hap is True
    assert domain(GPU_XML.replace("<loader type='rom'>", "<loader type='pflash'>")).bios == "ovmf"
    assert domain(GPU_XML.replace("<os>", "<os firmware='efi'>")).bios == "ovmf"
    assert domain(GPU_XML.replace("<model type='cirrus' vram='8192'", "<model type='vga' vram='16384'")
                  ).videoram_mib == 16
    assert domain(GPU_XML.replace("    <video>\n      <model type='cirrus' vram='8192' heads='1' primary='yes'/>\n"
                                  "    </video>\n", "")).videoram_mib == 0
    with pytest.raises(InputError, match="video type 'vmvga'"):
        domain(GPU_XML.replace("<model type='cirrus'", "<model type='vmvga'"))


def test_pod_with_devices_is_a_refusal() -> None:
    converted = domain(GPU_XML.replace("<currentMemory unit='KiB'>4194304", "<currentMemory unit='KiB'>1048576"))
    assert "PoD" in converted.refusals[0]


def test_bad_xml_is_an_input_error() -> None:
    with pytest.raises(InputError, match="domain XML"):
        parse_domain_xml("<domain>")
    with pytest.raises(InputError, match="not <domain>"):
        parse_domain_xml("<network/>")
    with pytest.raises(InputError, match="bus='zz'"):
        pci_devices(parse_domain_xml(GPU_XML.replace("bus='0x00'", "bus='zz'")))
    with pytest.raises(InputError, match="no <memory>"):
        domain(GPU_XML.replace("<memory unit='KiB'>4194304</memory>", ""))
