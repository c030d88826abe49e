"""The config: its schema (saeception.config.schema) and how it is read (saeception.config.loading), both
importable from here."""

from saeception.config.loading import (
    REMOVED_KEYS,
    KeyDoc,
    build_config,
    config_keys,
    flatten,
    key_docs,
    keys_table,
    keys_text,
    load_config,
    parse_override,
    read_yaml,
    to_dict,
    to_flat_dict,
)
from saeception.config.schema import (
    BROWSER_SCORES,
    MATCHED_STRATEGIES,
    MODEL_DTYPES,
    SAE_KINDS,
    SHARPEN_STRATEGIES,
    TRAIN_STRATEGIES,
    AuxConfig,
    BrowserConfig,
    ChainConfig,
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    FinetuneConfig,
    ModelConfig,
    SAEConfig,
    SharpenConfig,
    TrainConfig,
)

__all__ = ["REMOVED_KEYS", "KeyDoc", "build_config", "config_keys", "flatten", "key_docs", "keys_table", "keys_text", "load_config",
           "parse_override", "read_yaml", "to_dict", "to_flat_dict", "BROWSER_SCORES", "MATCHED_STRATEGIES",
           "MODEL_DTYPES", "SAE_KINDS", "SHARPEN_STRATEGIES", "TRAIN_STRATEGIES", "AuxConfig", "BrowserConfig", "ChainConfig", "Config", "ConfigError", "DataConfig",
           "EvalConfig", "FinetuneConfig", "ModelConfig", "SAEConfig", "SharpenConfig", "TrainConfig"]
