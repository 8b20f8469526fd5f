import json

import pytest

from models.config import ModelConfig


def test_defaults_are_valid_and_round_trip_through_json():
    config = ModelConfig()
    assert config.positive_threshold == 4.0
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        ModelConfig().loss = "bpr"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss": "hinge"}, "loss must be one of"),
        ({"learning_schedule": "sgd"}, "learning_schedule"),
        ({"no_components": 0}, "no_components must be >= 1"),
        ({"no_components": 8.0}, "no_components must be int"),
        ({"no_components": True}, "no_components must be int"),
        ({"learning_rate": 0}, "learning_rate must be > 0"),
        ({"learning_rate": float("nan")}, "learning_rate must be finite"),
        ({"positive_threshold": 6}, "positive_threshold"),
        ({"use_weights": 1}, "use_weights must be bool"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"rho": 1.0}, "rho"),
        ({"item_alpha": -0.1}, "alpha"),
        ({"dedupe_memory": 0}, "dedupe_memory"),
        ({"loss": "warp-kos", "use_weights": True}, "warp-kos"),
        ({"consolidate_every": -1}, "consolidate_every must be >= 0"),
        ({"consolidate_epochs": 0}, "consolidate_epochs must be >= 1"),
        ({"consolidation_window": -5}, "consolidation_window must be >= 0"),
        ({"blend_neighbours": -1}, "blend_neighbours must be >= 0"),
        ({"blend_weight": -0.5}, "blend_weight must be >= 0"),
    ],
)
def test_invalid_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_from_dict_refuses_unknown_keys_and_fills_defaults():
    with pytest.raises(ValueError, match="unknown model config key"):
        ModelConfig.from_dict({"losss": "warp"})
    assert ModelConfig.from_dict({"loss": "bpr"}) == ModelConfig(loss="bpr")
