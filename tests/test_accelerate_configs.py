"""configs/accelerate/: every file is read by accelerate's own config loader as the setup it names."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
EXPECTED = {  # file -> (distributed type, processes, machines, use_cpu)
    "single_cpu.yaml": ("NO", 1, 1, True),
    "cpu_2proc.yaml": ("MULTI_GPU", 2, 1, True),
    "multi_gpu_ddp.yaml": ("MULTI_GPU", 8, 1, False),
    "fsdp.yaml": ("FSDP", 8, 1, False),
    "deepspeed_zero2.yaml": ("DEEPSPEED", 8, 1, False),
    "multi_node.yaml": ("MULTI_GPU", 16, 2, False),
}


def test_every_setup_has_a_config():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_reads_the_config_as_named(name):
    config = load_config_from_file(str(CONFIGS / name))
    kind, processes, machines, cpu = EXPECTED[name]
    got = (str(config.distributed_type.value), config.num_processes, config.num_machines, config.use_cpu)
    assert got == (kind, processes, machines, cpu)
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "BasicTransformerBlock"
        assert config.fsdp_config["fsdp_version"] == 2
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == 2
