"""`l2s extract`: the P2S features of a dataset, written to features.h5. For each prompt X of the chosen splits,
h is the context state at layer L' (``--model.layer_context``) on X's last token and z the steering vector at
layer L* (``--model.layer_steer``): the state after X + T+ minus the state after X + T-, with (T+, T-) the
completions of X's category in the template set (``--data.templates``). Resumes a killed run; several devices
(``--trainer.devices``) share the work.

The command parses its arguments into an :class:`~l2s_lightning.stages.extract.ExtractConfig` and runs
:func:`l2s_lightning.stages.extract.run`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from l2s_lightning.data.datamodule import PromptDataModule
from l2s_lightning.extraction.module import ExtractionModule
from l2s_lightning.extraction.writer import HDF5FeatureWriter
from l2s_lightning.stages import extract
from l2s_lightning.stages.extract import ExtractConfig
from l2s_lightning.writer_cli import StageCLI, WriterCLI, load_stage_config, parse_stage_config


class ExtractCLI(WriterCLI[ExtractConfig]):
    """``l2s extract``: ExtractionModule + PromptDataModule + the HDF5 writer (``--writer.output``)."""

    command = "l2s extract"
    group_titles = StageCLI.group_titles | {
        "model": "what is extracted, and how",
        "data": "the prompts and their contrast completions",
        "writer": "the features file",
    }
    config_class = ExtractConfig
    module_class = ExtractionModule
    data_class = PromptDataModule
    writer_class = HDF5FeatureWriter


def load_config(
    path: str | Path, overrides: Mapping[str, Any] | None = None, args: Sequence[str] = ()
) -> ExtractConfig:
    """The :class:`ExtractConfig` of an extract YAML (``configs/extract/*.yaml``), ``args`` / dotted ``overrides``
    applied as ``l2s extract`` applies its command line."""
    return load_stage_config(ExtractCLI, path, overrides, args)


def extract_main(argv: list[str] | None = None) -> int:
    """Entry point of ``l2s extract``."""
    extract.run(parse_stage_config(ExtractCLI, argv))
    return 0
