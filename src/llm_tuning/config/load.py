"""A validated `Config` from a YAML file, a dict or nothing (all defaults), plus `section.key=value` overrides."""

from __future__ import annotations

from pathlib import Path

from ..data.records import SUPPORTED_SUFFIXES
from ..errors import UserError
from ..hub import looks_like_hub_id
from ..methods.registry import method_options
from .schema import at, build_section
from .sections import Config, DataConfig, ModelConfig, TrainConfig
from .sources import SECTIONS, apply_overrides, read_source


def load_config(source: str | Path | dict | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a validated Config from a YAML path (or a dict, or nothing: all defaults) and `key=value` overrides."""
    raw, where = read_source(source)
    apply_overrides(raw, where, overrides)
    return build_config(raw, where)


def as_config(config: Config | str | Path | dict | None, overrides=()) -> Config:
    """`config` itself when it is already a Config (overrides then do not apply), else loaded as load_config does."""
    return config if isinstance(config, Config) else load_config(config, overrides)


def build_config(raw: dict, where: dict[str, str] | None = None) -> Config:
    where = where or {}
    for section in raw:
        if section not in SECTIONS:
            raise UserError(f"unknown config section '{section}'{at(where, section)}; valid sections: {', '.join(SECTIONS)}")
        if raw[section] is not None and not isinstance(raw[section], dict):
            raise UserError(f"config section '{section}'{at(where, section)} must be a mapping of keys to values")
    config = Config(
        model=build_section(ModelConfig, "model", raw.get("model") or {}, where),
        method=method_options(dict(raw.get("method") or {}), where),
        data=build_section(DataConfig, "data", raw.get("data") or {}, where),
        train=build_section(TrainConfig, "train", raw.get("train") or {}, where),
    )
    _absolutize_paths(config)
    return config


def _absolute_if_local(paths):
    """Data sources made absolute, except hub dataset ids."""
    if paths is None:
        return None
    if isinstance(paths, list):
        return [_absolute_if_local(p) for p in paths]
    return paths if looks_like_hub_id(paths, SUPPORTED_SUFFIXES) else str(Path(paths).expanduser().resolve())


def _absolutize_paths(config: Config) -> None:
    """Relative paths are taken from the current directory; store them absolute so a run dir works anywhere."""
    config.data.path = _absolute_if_local(config.data.path)
    config.data.val_path = _absolute_if_local(config.data.val_path)
    config.train.output_dir = str(Path(config.train.output_dir).expanduser().resolve())
    model_path = Path(config.model.path).expanduser()
    if model_path.exists():
        config.model.path = str(model_path.resolve())
