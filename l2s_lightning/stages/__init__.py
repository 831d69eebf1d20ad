"""The stages as typed functions: ``extract.run``, ``fit.run``, ``predict.run``, ``evaluate.run``.

Each stage takes a dataclass config (``ExtractConfig``, ``FitConfig``, ``PredictConfig``) whose nested settings
mirror the constructors they feed; the LightningCLI programs (``l2s extract|fit|predict``) parse a YAML into that
config and call the stage, and so do ``l2s run`` and ``l2s sweep`` (``load_config`` of each CLI module), changing
what they need with :func:`dataclasses.replace`.
"""
